"""Edits are never lost: decisions save the form first, and every replaced text is kept as a restorable version."""
from __future__ import annotations

import pytest
from django.urls import reverse

from batches.models import Batch, DraftVersion, Newsletter
from tests.admin.test_draft_review import page_url


def form_data(newsletter, **changes) -> dict:
    """What the draft page's form posts: the text as on screen, plus the button pressed."""
    return {"subject": newsletter.subject, "preview_text": newsletter.preview_text,
            "body_markdown": newsletter.body_markdown, **changes}


def version_url(version) -> str:
    return reverse("admin:batches_newsletter_version", args=[version.newsletter_id, version.pk])


def restore_url(version) -> str:
    return reverse("admin:batches_newsletter_restore", args=[version.newsletter_id, version.pk])


def test_approve_saves_the_edited_subject_first_and_approves_what_was_saved(editor_client, post_form, draft):
    response = post_form(editor_client, page_url(draft), form_data(draft, subject="A better subject",
                                                                    _decision="approve"), page=page_url(draft))
    assert response.status_code == 302
    draft.refresh_from_db()
    assert (draft.subject, draft.status) == ("A better subject", Newsletter.Status.APPROVED)
    version = draft.versions.get()
    assert version.subject.startswith("Subject of story") and version.reason == DraftVersion.Reason.EDITED


def test_reject_and_request_a_new_draft_also_save_the_form_first(editor_client, post_form, draft, redis_broker):
    post_form(editor_client, page_url(draft), form_data(draft, preview_text="Edited preview", _decision="reject"),
              page=page_url(draft))
    draft.refresh_from_db()
    assert (draft.preview_text, draft.status) == ("Edited preview", Newsletter.Status.REJECTED)
    post_form(editor_client, page_url(draft), form_data(draft, body_markdown=draft.body_markdown + "\n\nMore.",
                                                        _decision="regenerate"), page=page_url(draft))
    draft.refresh_from_db()
    assert draft.status == Newsletter.Status.PENDING and draft.body_markdown.endswith("More.")


def test_a_decision_on_a_form_with_errors_saves_nothing_decides_nothing_and_keeps_the_text(
    editor_client, post_form, draft
):
    too_long = "x" * 301  # past the subject column's 300 characters
    response = post_form(editor_client, page_url(draft), form_data(draft, subject=too_long, preview_text="Kept",
                                                                    _decision="approve"), page=page_url(draft))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["subject"]
    assert 'value="Kept"' in response.content.decode()  # what the editor typed is still in the form
    assert "Nothing was decided" in " ".join(str(m) for m in response.context["messages"])
    draft.refresh_from_db()
    assert draft.status == Newsletter.Status.GENERATED and draft.preview_text != "Kept"
    assert not draft.versions.exists()


def test_approving_an_unchanged_draft_keeps_no_version_and_logs_only_the_approval(editor_client, post_form, draft):
    post_form(editor_client, page_url(draft), form_data(draft, _decision="approve"), page=page_url(draft))
    draft.refresh_from_db()
    assert draft.status == Newsletter.Status.APPROVED and not draft.versions.exists()
    trail = editor_client.get(page_url(draft)).context["trail"]
    assert [row["what"] for row in trail][-1] == "Approved." and "No fields changed." not in str(trail)


def test_a_decision_the_user_may_not_take_saves_nothing(viewer, post_form, draft):
    from tests.admin.conftest import csrf_client

    client = csrf_client(viewer)  # may edit drafts, may not approve
    response = post_form(client, page_url(draft), form_data(draft, subject="Sneaky", _decision="approve"),
                         page=page_url(draft))
    assert response.status_code == 403
    draft.refresh_from_db()
    assert draft.subject != "Sneaky" and draft.status == Newsletter.Status.GENERATED


def test_an_unknown_decision_posted_with_the_form_is_a_bad_request(editor_client, post_form, draft):
    response = post_form(editor_client, page_url(draft), form_data(draft, subject="No", _decision="publish"),
                         page=page_url(draft))
    assert response.status_code == 400
    draft.refresh_from_db()
    assert draft.subject != "No"


def test_the_draft_page_buttons_submit_the_form_and_enter_in_a_field_only_saves(editor_client, draft):
    page = editor_client.get(page_url(draft)).content.decode()
    form = page[page.index('id="newsletter_form"'):page.index("</form>", page.index('id="newsletter_form"'))]
    assert 'name="_decision" value="approve"' in form and 'name="_decision" value="approve_next"' in form
    # The first submit button of the form is the one Enter presses: a plain save.
    first = form.index('type="submit"')
    assert form[first:first + 60].startswith('type="submit" name="_continue" value="1"')


# --- Approve and next ------------------------------------------------------------------------------------------

def test_approve_and_next_opens_the_next_draft_waiting_in_the_same_batch(editor_client, post_form, make_batch):
    first, second, third = make_batch(["generated", "approved", "generated"]).newsletters.order_by("position")
    response = post_form(editor_client, page_url(first), form_data(first, _decision="approve_next"),
                         page=page_url(first))
    assert response["Location"] == page_url(third)
    first.refresh_from_db()
    assert first.status == Newsletter.Status.APPROVED


def test_approve_and_next_on_the_last_draft_goes_back_to_the_batch(editor_client, post_form, draft):
    response = post_form(editor_client, page_url(draft), form_data(draft, _decision="approve_next"),
                         page=page_url(draft), )
    assert response["Location"] == reverse("admin:batches_batch_change", args=[draft.batch_id])


# --- Length warnings ---------------------------------------------------------------------------------------------

def test_a_subject_past_70_characters_and_a_preview_past_140_are_warned_about(editor_client, draft):
    Newsletter.objects.filter(pk=draft.pk).update(subject="S" * 71, preview_text="P" * 141)
    page = editor_client.get(page_url(draft)).content.decode()
    warnings = page[page.index('id="desk-length-warnings"'):page.index("</ul>", page.index("desk-length-warnings"))]
    assert "71 characters" in warnings and "141 characters" in warnings


def test_a_subject_and_preview_within_the_limits_raise_no_warning(editor_client, draft):
    Newsletter.objects.filter(pk=draft.pk).update(subject="S" * 70, preview_text="P" * 140)
    assert 'id="desk-length-warnings"' not in editor_client.get(page_url(draft)).content.decode()


# --- Versions ----------------------------------------------------------------------------------------------------

def test_the_draft_page_lists_earlier_versions_with_who_when_and_which_model(editor_client, post_form, draft):
    post_form(editor_client, page_url(draft), form_data(draft, subject="Edited once", _continue="1"),
              page=page_url(draft))
    page = editor_client.get(page_url(draft)).content.decode()
    versions = page[page.index('id="desk-versions"'):]
    version = draft.versions.get()
    assert version_url(version) in versions
    assert "Replaced by an edit (Editor)" in versions and f"drafted by {draft.model}" in versions


def test_a_version_page_shows_the_old_text_as_readers_would_have_seen_it(editor_client, post_form, draft):
    old_subject = draft.subject
    post_form(editor_client, page_url(draft), form_data(draft, subject="Edited once", _continue="1"),
              page=page_url(draft))
    page = editor_client.get(version_url(draft.versions.get())).content.decode()
    assert f'<h1 class="desk-subject">{old_subject}</h1>' in page
    assert "<h2>Carriers raise surcharges again</h2>" in page and 'id="desk-restore-button"' in page


def test_restoring_a_version_puts_its_text_back_and_keeps_the_replaced_text(editor_client, post_form, draft):
    old_subject = draft.subject
    post_form(editor_client, page_url(draft), form_data(draft, subject="Edited once", _continue="1"),
              page=page_url(draft))
    version = draft.versions.get()
    response = post_form(editor_client, restore_url(version), {}, page=version_url(version))
    assert response["Location"] == page_url(draft)
    draft.refresh_from_db()
    assert draft.subject == old_subject
    latest = draft.versions.first()
    assert (latest.subject, latest.reason) == ("Edited once", DraftVersion.Reason.RESTORED)
    assert "Restored the version" in str(editor_client.get(page_url(draft)).context["trail"])


def test_restoring_needs_permission_to_edit_drafts(db, post_form, draft, editor_client):
    from django.contrib.auth.models import User

    from tests.admin.conftest import _make_user, csrf_client

    post_form(editor_client, page_url(draft), form_data(draft, subject="Edited once", _continue="1"),
              page=page_url(draft))
    reader = _make_user("reader", permissions=("batches.view_newsletter",))
    client = csrf_client(reader)
    version = draft.versions.get()
    assert 'id="desk-restore-button"' not in client.get(version_url(version)).content.decode()
    assert post_form(client, restore_url(version), {}, page=version_url(version)).status_code == 403
    assert User.objects.filter(username="reader").exists()


def test_a_version_cannot_be_restored_while_a_new_draft_is_being_written(editor_client, post_form, draft):
    post_form(editor_client, page_url(draft), form_data(draft, subject="Edited once", _continue="1"),
              page=page_url(draft))
    Newsletter.objects.filter(pk=draft.pk).update(status=Newsletter.Status.GENERATING)
    version = draft.versions.get()
    response = post_form(editor_client, restore_url(version), {}, page=version_url(version))
    draft.refresh_from_db()
    assert draft.subject == "Edited once"
    assert "being written" in str(list(editor_client.get(page_url(draft)).context["messages"]))
    assert response.status_code == 302


def test_an_approved_draft_restored_by_someone_who_may_not_approve_needs_approving_again(
    viewer_client, editor_client, post_form, make_batch
):
    draft = make_batch(["approved"], status=Batch.Status.DONE).newsletters.get()
    post_form(editor_client, page_url(draft), form_data(draft, subject="Edited once", _continue="1"),
              page=page_url(draft))
    version = draft.versions.get()
    post_form(viewer_client, restore_url(version), {}, page=version_url(version))
    draft.refresh_from_db()
    assert draft.status == Newsletter.Status.GENERATED and draft.reviewed_by is None


def test_a_version_of_another_draft_is_not_found(editor_client, post_form, make_batch):
    one, other = make_batch(["generated", "generated"]).newsletters.order_by("position")
    post_form(editor_client, page_url(one), form_data(one, subject="Edited", _continue="1"), page=page_url(one))
    version = one.versions.get()
    wrong = reverse("admin:batches_newsletter_version", args=[other.pk, version.pk])
    assert editor_client.get(wrong).status_code == 404


@pytest.mark.parametrize("status", ["generated", "approved"])
def test_the_draft_page_query_count_does_not_grow_with_the_versions(editor_client, make_batch, status):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    draft = make_batch([status], status=Batch.Status.DONE).newsletters.get()

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            editor_client.get(page_url(draft))
        return len(captured)

    editor_client.get(page_url(draft))
    DraftVersion.objects.create(newsletter=draft, subject="One", reason=DraftVersion.Reason.EDITED)
    few = queries()
    for n in range(5):
        DraftVersion.objects.create(newsletter=draft, subject=f"More {n}", reason=DraftVersion.Reason.NEW_DRAFT)
    assert queries() == few
