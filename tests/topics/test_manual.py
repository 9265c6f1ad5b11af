"""Topics added by hand at the desk (topics/manual.py through the topic admin's add page)."""
from __future__ import annotations

import pytest
from django.urls import reverse

from tests.admin.conftest import _make_user, csrf_client
from topics.models import Topic

pytestmark = pytest.mark.django_db
ADD = reverse("admin:topics_topic_add")


@pytest.fixture
def editor_client(migration_data):
    return csrf_client(_make_user("editor", group="Editor"))


def add(client, **data):
    client.get(ADD)
    return client.post(ADD, {"status": "approved", "summary": "", "category": "", **data,
                             "csrfmiddlewaretoken": client.cookies["csrftoken"].value})


def test_an_editor_adds_a_topic_with_a_url_and_a_title(editor_client):
    response = add(editor_client, url="https://example.com/news/usps-rates?utm_source=x",
                   title="USPS raises Ground Advantage rates for small parcels")
    assert response.status_code == 302
    topic = Topic.objects.get()
    assert (topic.source, topic.status, topic.sources) == ("manual", "approved", ["manual"])
    assert topic.canonical_url == "https://example.com/news/usps-rates"
    assert topic.category.slug == "shipping_logistics" and not topic.category_locked  # by keywords
    assert topic.reviewed_by.username == "editor"


def test_a_category_chosen_by_hand_is_kept_and_locked(editor_client, categories):
    add(editor_client, url="https://example.com/a", title="USPS raises rates",
        category=str(categories["pricing_margins"].pk))
    topic = Topic.objects.get()
    assert topic.category.slug == "pricing_margins" and topic.category_locked


def test_the_same_story_cannot_be_added_twice(editor_client):
    add(editor_client, url="https://example.com/story", title="One story")
    response = add(editor_client, url="https://example.com/story?utm_medium=mail", title="The same story")
    assert response.status_code == 200 and Topic.objects.count() == 1
    assert "already a topic" in response.content.decode()


def test_a_url_and_a_title_are_both_required(editor_client):
    response = add(editor_client, url="", title="")
    errors = response.context["adminform"].form.errors
    assert "url" in errors and "title" in errors and not Topic.objects.exists()


def test_the_add_page_asks_only_for_what_a_person_knows(editor_client):
    form = editor_client.get(ADD).context["adminform"].form
    assert list(form.fields) == ["url", "title", "summary", "category", "status"]


def test_the_same_url_is_found_through_the_partial_index_of_topics_with_a_url(categories):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.topics.test_importing import plan
    from topics.manual import known_topic

    Topic.objects.bulk_create(Topic(title=f"No link {n}", external_id=f"n{n}", category=categories["pricing_margins"])
                              for n in range(300))
    linked = Topic.objects.create(title="Linked", external_id="l1", canonical_url="https://news.example.com/a",
                                  category=categories["pricing_margins"])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE topics_topic")  # statistics: nearly every URL is blank (they outlive the test)

    with CaptureQueriesContext(connection) as queries:
        found = known_topic(url="https://news.example.com/a?utm_source=x", title="Another title")

    assert found == linked
    [lookup] = [q["sql"] for q in queries if "canonical_url" in q["sql"].split("WHERE")[-1]]
    assert "topic_canonical_url" in plan(lookup), plan(lookup)
