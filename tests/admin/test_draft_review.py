"""Draft review: the draft as it would read, editing, approve / reject / a new draft, and the who-and-when trail."""
from __future__ import annotations

import pytest
from django.urls import reverse

from batches.models import Batch, Newsletter
from tests.admin.conftest import csrf_client, queued_tasks

HOSTILE_BODY = """## Hello

<script>alert('body')</script>
<img src=x onerror="alert('img')">
[click me](javascript:alert('link'))
<a href="https://example.com" onclick="alert('a')">a link</a>
"""


def page_url(newsletter) -> str:
    return reverse("admin:batches_newsletter_change", args=[newsletter.pk])


def review_url(newsletter) -> str:
    return reverse("admin:batches_newsletter_review", args=[newsletter.pk])


def decide(client, post_form, newsletter, decision: str):
    return post_form(client, review_url(newsletter), {"decision": decision}, page=page_url(newsletter))


def test_the_draft_page_shows_the_subject_preview_and_body_as_they_would_read(editor_client, draft):
    page = editor_client.get(page_url(draft)).content.decode()
    assert f'<h1 class="desk-subject">{draft.subject}</h1>' in page
    assert draft.preview_text in page
    assert "<h2>Carriers raise surcharges again</h2>" in page
    assert "<strong>higher</strong>" in page
    assert '<a href="https://example.com/carriers" rel="noopener noreferrer">regional carriers</a>' in page


def test_script_injection_in_a_draft_is_removed_from_the_preview(editor_client, make_batch):
    newsletter = make_batch(["generated"], body=HOSTILE_BODY).newsletters.get()
    preview = editor_client.get(page_url(newsletter)).context["preview_html"]
    assert "<script" not in preview and "onerror" not in preview and "onclick" not in preview
    assert "javascript:" not in preview
    assert '<a href="https://example.com" rel="noopener noreferrer">a link</a>' in preview


@pytest.mark.parametrize("hostile", ["<script>alert('x')</script>", '"><img src=x onerror=alert(1)>'])
def test_a_hostile_topic_title_is_shown_as_text_on_the_draft_page(editor_client, make_batch, hostile):
    newsletter = make_batch(["generated"], titles=[hostile]).newsletters.get()
    page = editor_client.get(page_url(newsletter)).content.decode()
    assert hostile not in page


def test_an_editor_can_edit_the_draft_and_the_edit_is_in_the_trail(editor_client, post_form, draft):
    response = post_form(editor_client, page_url(draft), {
        "subject": "Peak surcharges: three moves before December", "preview_text": draft.preview_text,
        "body_markdown": draft.body_markdown, "_continue": "1",
    }, page=page_url(draft))
    assert response.status_code == 302
    draft.refresh_from_db()
    assert draft.subject == "Peak surcharges: three moves before December"
    trail = editor_client.get(page_url(draft)).context["trail"]
    assert any(row["who"] == "Editor" and "Subject" in row["what"] for row in trail)


def test_an_approved_draft_edited_by_someone_who_may_not_approve_needs_approving_again(
    viewer_client, post_form, draft
):
    Newsletter.objects.filter(pk=draft.pk).update(status=Newsletter.Status.APPROVED)

    response = post_form(viewer_client, page_url(draft), {
        "subject": "A subject nobody approved", "preview_text": draft.preview_text,
        "body_markdown": draft.body_markdown, "_continue": "1",
    }, page=page_url(draft))

    assert response.status_code == 302
    draft.refresh_from_db()
    assert (draft.subject, draft.status, draft.reviewed_by) == (
        "A subject nobody approved", Newsletter.Status.GENERATED, None
    )


def test_an_approver_editing_an_approved_draft_keeps_it_approved(editor_client, post_form, draft):
    Newsletter.objects.filter(pk=draft.pk).update(status=Newsletter.Status.APPROVED)

    post_form(editor_client, page_url(draft), {
        "subject": "Tightened by the approver", "preview_text": draft.preview_text,
        "body_markdown": draft.body_markdown, "_continue": "1",
    }, page=page_url(draft))

    draft.refresh_from_db()
    assert (draft.subject, draft.status) == ("Tightened by the approver", Newsletter.Status.APPROVED)


def test_a_body_sent_back_unchanged_with_crlf_line_ends_is_not_recorded_as_an_edit(editor_client, post_form, draft):
    post_form(editor_client, page_url(draft), {
        "subject": "A sharper subject", "preview_text": draft.preview_text,
        "body_markdown": draft.body_markdown.replace("\n", "\r\n"), "_continue": "1",
    }, page=page_url(draft))
    draft.refresh_from_db()
    assert "\r" not in draft.body_markdown
    assert editor_client.get(page_url(draft)).context["trail"][-1]["what"] == "Changed Subject."


def test_approving_records_who_and_when(editor_client, post_form, draft):
    response = decide(editor_client, post_form, draft, "approve")
    assert response.status_code == 302
    draft.refresh_from_db()
    assert draft.status == Newsletter.Status.APPROVED
    assert draft.reviewed_by.username == "editor" and draft.reviewed_at is not None


def test_the_trail_shows_the_drafting_and_the_approval_in_order(editor_client, post_form, draft):
    decide(editor_client, post_form, draft, "approve")
    trail = editor_client.get(page_url(draft)).context["trail"]
    assert [row["what"] for row in trail][-1] == "Approved."
    assert trail[-1]["who"] == "Editor"


def test_rejecting_a_draft_marks_it_rejected(editor_client, post_form, draft):
    decide(editor_client, post_form, draft, "reject")
    draft.refresh_from_db()
    assert draft.status == Newsletter.Status.REJECTED and draft.reviewed_by.username == "editor"


def test_an_item_without_a_draft_cannot_be_approved(editor_client, post_form, make_batch):
    newsletter = make_batch(["failed"], status=Batch.Status.FAILED, error="boom").newsletters.get()
    response = decide(editor_client, post_form, newsletter, "approve")
    newsletter.refresh_from_db()
    assert newsletter.status == Newsletter.Status.FAILED
    messages = [str(m) for m in editor_client.get(response["Location"]).context["messages"]]
    assert any("no draft to approve" in m for m in messages)


def test_approving_without_the_permission_is_forbidden(viewer_client, post_form, draft):
    response = decide(viewer_client, post_form, draft, "approve")
    assert response.status_code == 403
    draft.refresh_from_db()
    assert draft.status == Newsletter.Status.GENERATED


def test_a_user_without_the_approve_permission_sees_no_approve_button(viewer_client, draft):
    page = viewer_client.get(page_url(draft)).content.decode()
    assert 'id="desk-approve"' not in page and 'id="desk-regenerate-button"' not in page


def test_an_editor_sees_approve_reject_and_new_draft_buttons(editor_client, draft):
    page = editor_client.get(page_url(draft)).content.decode()
    assert 'id="desk-approve"' in page and 'id="desk-reject"' in page and 'id="desk-regenerate-button"' in page


def test_a_decision_without_a_csrf_token_is_rejected(editor_client, draft):
    editor_client.get(page_url(draft))
    response = editor_client.post(review_url(draft), {"decision": "approve"})
    assert response.status_code == 403
    draft.refresh_from_db()
    assert draft.status == Newsletter.Status.GENERATED


def test_an_unknown_decision_is_a_bad_request(editor_client, post_form, draft):
    assert decide(editor_client, post_form, draft, "publish").status_code == 400


def test_the_review_view_accepts_only_post(editor_client, draft):
    assert editor_client.get(review_url(draft)).status_code == 405


def test_asking_for_a_new_draft_puts_the_item_back_and_queues_it_after_commit(
    editor_client, post_form, draft, redis_broker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = decide(editor_client, post_form, draft, "regenerate")
    draft.refresh_from_db()
    assert draft.status == Newsletter.Status.PENDING
    assert queued_tasks(redis_broker) == []
    for callback in callbacks:
        callback()
    assert queued_tasks(redis_broker) == ["batches.generate_newsletter"]
    assert response["Location"] == reverse("admin:batches_batch_change", args=[draft.batch_id])


def test_asking_for_a_new_draft_needs_the_run_batch_permission(viewer_client, post_form, draft):
    assert decide(viewer_client, post_form, draft, "regenerate").status_code == 403
    draft.refresh_from_db()
    assert draft.status == Newsletter.Status.GENERATED


def test_an_approved_draft_is_not_drafted_again(editor_client, post_form, make_batch):
    newsletter = make_batch(["approved"], status=Batch.Status.DONE).newsletters.get()
    decide(editor_client, post_form, newsletter, "regenerate")
    newsletter.refresh_from_db()
    assert newsletter.status == Newsletter.Status.APPROVED


@pytest.mark.django_db(transaction=True)
def test_asking_for_a_new_draft_with_the_broker_down_leaves_the_draft_as_it_was(
    editor, post_form, make_batch, broker_down
):
    client = csrf_client(editor)
    newsletter = make_batch(["rejected"], status=Batch.Status.DONE).newsletters.get()
    response = decide(client, post_form, newsletter, "regenerate")
    newsletter.refresh_from_db()
    assert newsletter.status == Newsletter.Status.REJECTED and newsletter.body_markdown
    messages = [str(m) for m in client.get(response["Location"]).context["messages"]]
    assert any("broker is unreachable" in m and "The draft is unchanged" in m for m in messages)


@pytest.mark.django_db(transaction=True)
def test_a_new_draft_of_a_failed_item_that_could_not_be_queued_offers_its_topic_again(
    editor, post_form, make_batch, broker_down
):
    newsletter = make_batch(["failed"], status=Batch.Status.PARTIAL).newsletters.get()

    decide(csrf_client(editor), post_form, newsletter, "regenerate")

    newsletter.refresh_from_db()
    assert newsletter.status == Newsletter.Status.FAILED
    assert (newsletter.topic.usage, newsletter.topic.used_at) == ("unused", None)


def test_the_approve_action_on_the_list_logs_each_draft(editor_client, run_action, make_batch):
    batch = make_batch(["generated", "generated", "failed"], status=Batch.Status.PARTIAL)
    ids = list(batch.newsletters.values_list("pk", flat=True))
    run_action(editor_client, reverse("admin:batches_newsletter_changelist"), "approve", ids)
    assert batch.newsletters.filter(status=Newsletter.Status.APPROVED).count() == 2
    from django.contrib.admin.models import LogEntry

    assert LogEntry.objects.filter(change_message="Approved.").count() == 2


def test_the_draft_page_query_count_does_not_depend_on_the_batch_size(editor_client, make_batch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    small = make_batch(["generated"]).newsletters.get()
    large = make_batch(["generated"] * 12).newsletters.first()
    counts = []
    for newsletter in (small, small, large):
        with CaptureQueriesContext(connection) as queries:
            editor_client.get(page_url(newsletter))
        counts.append(len(queries))
    assert counts[1] == counts[2]
