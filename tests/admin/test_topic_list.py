"""The topic list shows how each topic was used (drafted, with a link to the draft; in a batch; a repeat), and
the topic, draft and batch pages link to each other."""
from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from batches.models import Batch
from tests.admin.conftest import _make_user, csrf_client

TOPICS = reverse("admin:topics_topic_changelist")


def cell(page: str, topic, name: str) -> str:
    row = page[page.index(f'name="_selected_action" value="{topic.pk}"'):]
    start = row.index(f'class="field-{name}"')
    return row[start:row.index("</td>", start)]


def test_a_drafted_topic_links_to_its_draft(editor_client, make_batch):
    draft = make_batch(["generated"], status=Batch.Status.DONE).newsletters.get()
    page = editor_client.get(TOPICS).content.decode()
    use = cell(page, draft.topic, "use")
    assert ">drafted<" in use and "Draft ready: open the draft" in use
    assert reverse("admin:batches_newsletter_change", args=[draft.pk]) in use


def test_a_topic_being_drafted_links_to_its_batch(editor_client, make_batch):
    batch = make_batch(["generating"])
    page = editor_client.get(TOPICS).content.decode()
    use = cell(page, batch.newsletters.get().topic, "use")
    assert f"in batch #{batch.pk}" in use and reverse("admin:batches_batch_change", args=[batch.pk]) in use


def test_a_topic_repeating_a_story_drafted_recently_is_marked_a_repeat(editor_client, make_batch, make_topic):
    make_batch(["generated"], titles=["Meta ads CPM spiked 40% this week"], status=Batch.Status.DONE)
    repeat = make_topic("Meta ads CPM spiked 40% this week - anyone else?", source="reddit")
    fresh = make_topic("Klaviyo adds SMS consent tools")
    page = editor_client.get(TOPICS).content.decode()
    assert ">repeat<" in cell(page, repeat, "use") and "Meta ads CPM spiked 40% this week" in cell(page, repeat, "use")
    assert cell(page, fresh, "use").endswith("—")


def test_the_topic_list_query_count_does_not_grow_with_the_rows(editor_client, make_batch, make_topic):
    make_batch(["generated"], status=Batch.Status.DONE)
    editor_client.get(TOPICS)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert editor_client.get(TOPICS).status_code == 200
        return len(captured)

    few = queries()
    make_batch(["generated", "approved", "generating", "failed"] * 3, status=Batch.Status.DONE)
    for n in range(10):
        make_topic(f"Unused topic {n} about packaging")
    assert queries() == few


def test_a_topic_page_links_to_its_drafts_and_their_batches(editor_client, make_batch):
    draft = make_batch(["generated"], status=Batch.Status.DONE).newsletters.get()
    page = editor_client.get(reverse("admin:topics_topic_change", args=[draft.topic_id])).content.decode()
    drafts = page[page.index('id="desk-topic-drafts"'):]
    assert reverse("admin:batches_newsletter_change", args=[draft.pk]) in drafts
    assert reverse("admin:batches_batch_change", args=[draft.batch_id]) in drafts


def test_a_topic_page_shows_no_drafts_to_staff_who_may_not_read_drafts(make_batch):
    draft = make_batch(["generated"], status=Batch.Status.DONE).newsletters.get()
    draft.subject = "Embargoed: our Q3 margin story"
    draft.save(update_fields=["subject"])
    client = csrf_client(_make_user("topics_only", permissions=("topics.view_topic",)))
    page = client.get(reverse("admin:topics_topic_change", args=[draft.topic_id])).content.decode()
    assert "Embargoed" not in page and 'id="desk-topic-drafts"' not in page
    assert reverse("admin:batches_newsletter_change", args=[draft.pk]) not in page


def test_the_topic_list_links_drafts_and_batches_only_for_staff_who_may_view_them(editor_client, make_batch):
    drafted = make_batch(["generated"], status=Batch.Status.DONE).newsletters.get()
    drafting = make_batch(["generating"], status=Batch.Status.RUNNING).newsletters.get()
    draft_url = reverse("admin:batches_newsletter_change", args=[drafted.pk])
    batch_url = reverse("admin:batches_batch_change", args=[drafting.batch_id])
    topics_only = csrf_client(_make_user("topics_only", permissions=("topics.view_topic",)))

    page = topics_only.get(reverse("admin:topics_topic_changelist")).content.decode()
    editor_page = editor_client.get(reverse("admin:topics_topic_changelist")).content.decode()

    assert draft_url not in page and batch_url not in page
    assert ">drafted<" in page and f">in batch #{drafting.batch_id}<" in page  # what became of them, still said
    assert draft_url in editor_page and batch_url in editor_page


def test_a_draft_page_links_to_its_topic_and_batch_and_a_batch_page_to_its_topics(editor_client, make_batch):
    draft = make_batch(["generated"], status=Batch.Status.DONE).newsletters.get()
    page = editor_client.get(reverse("admin:batches_newsletter_change", args=[draft.pk])).content.decode()
    assert f'href="{reverse("admin:topics_topic_change", args=[draft.topic_id])}" id="desk-topic-link"' in page
    assert f'href="{reverse("admin:batches_batch_change", args=[draft.batch_id])}" id="desk-batch-link"' in page
    batch_page = editor_client.get(reverse("admin:batches_batch_change", args=[draft.batch_id])).content.decode()
    assert reverse("admin:topics_topic_change", args=[draft.topic_id]) in batch_page
