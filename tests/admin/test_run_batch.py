"""The 'New batch' page and the topics' 'Run batch' action: preview, confirm, dry run, zero candidates, broker down."""
from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.urls import reverse

from batches.models import Batch
from tests.admin.conftest import csrf_client, queued_tasks

RUN_URL = reverse("admin:batches_batch_run")


@pytest.fixture(autouse=True)
def drafting_key(settings) -> None:
    """Drafting can authenticate, as on a configured desk (tests of a missing key set it back to empty)."""
    settings.ANTHROPIC_API_KEY = "sk-ant-test-0000000000000000wxyz"


def preview(client, query: str = ""):
    response = client.get(RUN_URL + query)
    assert response.status_code == 200
    return response


def confirm_data(response, **overrides) -> dict:
    """What the page's confirmation form would post."""
    form = response.context["form"].cleaned_data
    data = {"size": form["size"], "budget_usd": str(form["budget_usd"]), "topics": response.context["topics_param"],
            "selection": response.context["selection"]}
    if form["include_new"]:
        data["include_new"] = "on"
    data.update(overrides)
    return data


def test_the_new_batch_page_shows_the_topics_diversity_selection_picked(editor_client, topics_in_every_category):
    response = preview(editor_client)
    picked = [item.topic.pk for item in response.context["plan"].items]
    assert picked == [t.pk for t in topics_in_every_category]
    for topic in topics_in_every_category:
        assert topic.title in response.content.decode()


def test_the_new_batch_page_says_how_many_candidates_were_left_out_and_why(editor_client, make_topic):
    from topics import usage

    make_topic("Carrier rates climb", category="shipping_logistics", score=9)
    drafted = make_topic("Loyalty emails that work", category="customer_retention", score=8)
    usage.mark_taken(topic_ids=[drafted.pk])
    usage.mark_drafted(topic_id=drafted.pk)
    make_topic("Loyalty emails that really work - any tips?", category="platform_tools", score=50)

    page = preview(editor_client).content.decode()

    assert ('2 candidates left out: <span data-reason="already_drafted">1 already drafted</span>, '
            '<span data-reason="recent_repeat">1 repeat of a recent story</span>.') in page


def test_the_new_batch_page_names_unreviewed_topics_among_the_candidates_when_they_are_included(
        editor_client, make_topic):
    make_topic("Approved story about shipping rates", status="approved")
    for n in range(3):
        make_topic(f"Unreviewed story number {n} about ads", status="new")

    def lead(query: str) -> str:
        page = preview(editor_client, query).content.decode()
        return " ".join(re.search(r'<p class="desk-lead">(.*?)</p>', page, re.S).group(1).split())

    assert "every approved or unreviewed topic that no draft has used yet (4)" in lead("?include_new=on")
    assert "every approved topic that no draft has used yet (1)" in lead("")


def test_the_new_batch_page_shows_the_categories_covered(editor_client, categories, make_topic):
    make_topic("Carrier rates climb", category="shipping_logistics", score=9)
    make_topic("Loyalty emails that work", category="customer_retention", score=8)
    response = preview(editor_client)
    covered = [c.slug for c in response.context["covered_categories"]]
    assert sorted(covered) == ["customer_retention", "shipping_logistics"]
    assert len(response.context["missing_categories"]) == len(categories) - 2


def test_the_new_batch_page_shows_the_estimated_cost_against_the_budget(editor_client, topics_in_every_category):
    response = preview(editor_client, "?budget_usd=12.50")
    estimate = response.context["plan"].estimated_cost_usd
    assert estimate > 0
    page = response.content.decode()
    assert f"${estimate:.2f}" in page
    assert "$12.50 budget" in page


def test_the_new_batch_page_shows_what_is_left_of_the_monthly_cap(editor_client, settings, topics_in_every_category):
    settings.MONTHLY_BUDGET_USD = "100"
    response = preview(editor_client)
    assert response.context["monthly_remaining"] == Decimal("100")
    assert "left of $100.00 this month" in response.content.decode()


def test_a_topic_id_that_is_not_a_plain_number_is_refused_not_a_crash(editor_client, topics_in_every_category):
    response = editor_client.get(reverse("admin:batches_batch_run") + "?topics=%C2%B2")  # "²"

    assert response.status_code == 200
    assert "whole numbers" in response.content.decode()


def test_a_batch_with_zero_candidates_offers_no_confirm_button(editor_client, make_topic):
    make_topic("Waiting for review", status="new")
    response = preview(editor_client)
    assert response.context["plan"].items == []
    assert b"Nothing to select" in response.content
    assert b"desk-confirm-button" not in response.content


def test_confirming_a_batch_with_zero_candidates_creates_nothing(editor_client, post_form, make_topic):
    make_topic("Waiting for review", status="new")
    response = post_form(editor_client, RUN_URL, {"size": 8, "budget_usd": "40", "selection": ""}, page=RUN_URL)
    assert response.status_code == 200
    assert not Batch.objects.exists()
    assert "Nothing to select" in " ".join(str(m) for m in response.context["messages"])


def test_confirming_creates_the_batch_of_exactly_the_previewed_topics(
    editor_client, post_form, topics_in_every_category, redis_broker, django_capture_on_commit_callbacks
):
    page = preview(editor_client)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_form(editor_client, RUN_URL, confirm_data(page), page=RUN_URL)
    batch = Batch.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:batches_batch_change", args=[batch.pk])
    assert batch.candidate_ids == [t.pk for t in topics_in_every_category]
    assert batch.size == 8 and batch.budget_usd == Decimal("40") and batch.created_by.username == "editor"
    assert batch.estimated_cost_usd == page.context["plan"].estimated_cost_usd


def test_confirming_queues_the_batch_only_after_commit(
    editor_client, post_form, topics_in_every_category, redis_broker, django_capture_on_commit_callbacks
):
    page = preview(editor_client)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        post_form(editor_client, RUN_URL, confirm_data(page), page=RUN_URL)
    assert queued_tasks(redis_broker) == []
    assert Batch.objects.get().status == Batch.Status.PENDING
    for callback in callbacks:
        callback()
    assert queued_tasks(redis_broker) == ["batches.run_batch"]
    assert Batch.objects.get().status == Batch.Status.QUEUED


def test_a_dry_run_creates_no_batch_and_queues_nothing(
    editor_client, post_form, topics_in_every_category, redis_broker
):
    page = preview(editor_client)
    response = post_form(editor_client, RUN_URL, confirm_data(page, dry_run="on"), page=RUN_URL)
    assert response.status_code == 200
    assert not Batch.objects.exists()
    assert queued_tasks(redis_broker) == []
    assert "Dry run" in " ".join(str(m) for m in response.context["messages"])
    assert len(response.context["plan"].items) == 8


def test_a_selection_that_changed_since_the_preview_is_not_run(editor_client, post_form, topics_in_every_category,
                                                               make_topic):
    page = preview(editor_client)
    make_topic("A far better story arrived", category="pricing_margins", score=1000)
    response = post_form(editor_client, RUN_URL, confirm_data(page), page=RUN_URL)
    assert response.status_code == 200
    assert not Batch.objects.exists()
    assert "selection changed" in " ".join(str(m) for m in response.context["messages"])
    assert "A far better story arrived" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_broker_that_is_down_shows_an_error_and_leaves_the_batch_failed_not_stuck(
    editor, post_form, topics_in_every_category, broker_down
):
    client = csrf_client(editor)
    page = preview(client)
    response = post_form(client, RUN_URL, confirm_data(page), page=RUN_URL)
    batch = Batch.objects.get()
    assert response.status_code == 302
    assert batch.status == Batch.Status.FAILED
    assert "broker is unreachable" in batch.status_reason
    assert not batch.newsletters.exists()
    messages = [str(m) for m in client.get(response["Location"]).context["messages"]]
    assert any("task broker is unreachable" in m and "nothing was drafted or spent" in m for m in messages)


def test_the_topics_action_offers_only_the_selected_topics_as_candidates(editor_client, run_action,
                                                                        topics_in_every_category):
    chosen = topics_in_every_category[2:5]
    response = run_action(editor_client, reverse("admin:topics_topic_changelist"), "run_batch",
                          [t.pk for t in chosen])
    assert response.status_code == 302
    assert response["Location"].startswith(RUN_URL + "?topics=")
    page = editor_client.get(response["Location"])
    assert [item.topic.pk for item in page.context["plan"].items] == [t.pk for t in chosen]


def test_unapproved_topics_chosen_in_the_action_are_left_out_and_counted(editor_client, make_topic):
    approved = make_topic("Approved story", category="pricing_margins")
    unreviewed = make_topic("Unreviewed story", category="ads_marketing", status="new")
    response = preview(editor_client, f"?topics={approved.pk},{unreviewed.pk}")
    assert [item.topic.pk for item in response.context["plan"].items] == [approved.pk]
    assert response.context["left_out"] == 1


@pytest.mark.parametrize("hostile", ["<script>alert('x')</script>", '"><img src=x onerror=alert(1)>'])
def test_a_hostile_topic_title_is_shown_as_text_on_the_confirmation_page(editor_client, make_topic, hostile):
    make_topic(hostile, category="pricing_margins")
    page = preview(editor_client).content.decode()
    assert hostile not in page
    assert "&lt;" in page and ("&lt;script&gt;" in page or "&lt;img src=x onerror=alert(1)&gt;" in page)


def test_a_user_without_run_batch_gets_403_on_the_new_batch_page(viewer_client, topics_in_every_category):
    assert viewer_client.get(RUN_URL).status_code == 403


def test_a_direct_post_without_run_batch_is_forbidden_and_creates_nothing(viewer_client, topics_in_every_category):
    viewer_client.get(reverse("admin:batches_batch_changelist"))
    token = viewer_client.cookies["csrftoken"].value
    ids = ",".join(str(t.pk) for t in topics_in_every_category)
    response = viewer_client.post(RUN_URL, {"size": 8, "budget_usd": "40", "selection": ids,
                                            "csrfmiddlewaretoken": token})
    assert response.status_code == 403
    assert not Batch.objects.exists()


def test_a_post_without_a_csrf_token_is_rejected(editor_client, topics_in_every_category):
    page = preview(editor_client)
    response = editor_client.post(RUN_URL, confirm_data(page))
    assert response.status_code == 403
    assert not Batch.objects.exists()


def test_an_anonymous_visitor_is_sent_to_the_login_page(topics_in_every_category):
    response = csrf_client().get(RUN_URL)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_an_editor_sees_the_new_batch_button_and_the_run_batch_action(editor_client):
    batches = editor_client.get(reverse("admin:batches_batch_changelist")).content.decode()
    topics = editor_client.get(reverse("admin:topics_topic_changelist")).content.decode()
    assert 'id="desk-new-batch"' in batches and 'id="desk-new-batch"' in topics
    assert 'value="run_batch"' in topics


def test_a_user_without_run_batch_sees_no_new_batch_button_and_no_run_batch_action(viewer_client):
    batches = viewer_client.get(reverse("admin:batches_batch_changelist")).content.decode()
    topics = viewer_client.get(reverse("admin:topics_topic_changelist")).content.decode()
    assert "desk-new-batch" not in batches and "desk-new-batch" not in topics
    assert 'value="run_batch"' not in topics


def test_the_run_batch_action_is_refused_to_a_user_without_the_permission(viewer_client, run_action,
                                                                           topics_in_every_category):
    response = run_action(viewer_client, reverse("admin:topics_topic_changelist"), "run_batch",
                          [topics_in_every_category[0].pk])
    assert RUN_URL not in response.get("Location", "")
    assert not Batch.objects.exists()


# --- Readiness before Confirm: drafting must authenticate, and a worker must be there to pick the batch up --------

def test_without_a_key_the_run_page_warns_and_offers_no_confirm_button(editor_client, settings,
                                                                       topics_in_every_category):
    settings.ANTHROPIC_API_KEY, settings.CLAUDE_STANDIN = "", False
    page = preview(editor_client).content.decode()
    assert 'id="desk-drafting-blocked"' in page and "every item would fail" in page
    assert 'id="desk-confirm-button"' not in page


def test_without_a_key_a_confirmation_posted_anyway_starts_nothing(editor_client, post_form, settings,
                                                                   topics_in_every_category):
    settings.ANTHROPIC_API_KEY, settings.CLAUDE_STANDIN = "", False
    data = confirm_data(preview(editor_client))
    response = post_form(editor_client, RUN_URL, data, page=RUN_URL)
    assert response.status_code == 200 and not Batch.objects.exists()
    assert "drafting cannot authenticate" in " ".join(str(m) for m in response.context["messages"])


@pytest.mark.redis
def test_with_no_worker_running_the_run_page_warns_before_confirm(editor_client, redis_broker,
                                                                  topics_in_every_category):
    page = preview(editor_client).content.decode()
    warning = page[page.index('id="desk-no-worker"'):]
    assert "No worker is running" in warning and "make serve" in warning
    assert page.index('id="desk-no-worker"') < page.index('id="desk-confirm-button"')


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_with_a_worker_running_the_run_page_raises_no_worker_warning(editor_client, desk_worker,
                                                                     topics_in_every_category):
    response = preview(editor_client)
    assert response.context["worker_missing"] is False
    assert 'id="desk-no-worker"' not in response.content.decode()


def test_an_estimate_above_the_budget_shows_its_true_percentage_with_a_full_bar(editor_client,
                                                                                topics_in_every_category):
    response = preview(editor_client, "?budget_usd=0.05")
    estimate = response.context["plan"].estimated_cost_usd
    true_percent = round(float(100 * estimate / Decimal("0.05")), 1)
    assert true_percent > 100 and response.context["estimate_percent"] == true_percent
    page = response.content.decode()
    assert f"{true_percent:,.0f}% of the $0.05 budget" in page
    assert 'aria-valuenow="100"><span style="width: 100%">' in page
