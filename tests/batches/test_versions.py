"""Versions of a draft (batches/versions.py): a new draft never overwrites the old text without keeping it."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from batches import running
from batches.generation import generate_newsletter
from batches.models import DraftVersion, Newsletter
from batches.versions import RestoreRefused, keep_version, restore_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def drafted(fake_anthropic, topics_in_every_category) -> Newsletter:
    batch = running.create_batch(size=1, budget_usd=40)
    running.start_batch(batch_id=batch.pk)
    newsletter = batch.newsletters.get()
    generate_newsletter(newsletter_id=newsletter.pk, token="first")
    newsletter.refresh_from_db()
    assert newsletter.status == Newsletter.Status.GENERATED
    return newsletter


def test_the_first_draft_replaces_nothing_and_keeps_no_version(drafted):
    assert not drafted.versions.exists()


def test_a_new_draft_keeps_the_text_it_replaces_with_its_model_and_time(drafted):
    Newsletter.objects.filter(pk=drafted.pk).update(status=Newsletter.Status.PENDING, subject="Edited by hand")
    generate_newsletter(newsletter_id=drafted.pk, token="second")
    version = DraftVersion.objects.get(newsletter=drafted)
    assert (version.subject, version.body_markdown) == ("Edited by hand", drafted.body_markdown)
    assert (version.model, version.drafted_at) == (drafted.model, drafted.generated_at)
    assert version.reason == DraftVersion.Reason.NEW_DRAFT and version.replaced_by is None
    drafted.refresh_from_db()
    assert drafted.subject != "Edited by hand"


def test_a_failed_new_draft_replaces_nothing_and_keeps_no_version(drafted, fake_anthropic):
    from batches.claude_standin import Fault

    fake_anthropic.enqueue(Fault(kind="error", status=400))
    Newsletter.objects.filter(pk=drafted.pk).update(status=Newsletter.Status.PENDING)
    generate_newsletter(newsletter_id=drafted.pk, token="second")
    drafted.refresh_from_db()
    assert drafted.status == Newsletter.Status.FAILED and drafted.body_markdown
    assert not drafted.versions.exists()


def test_restoring_a_version_brings_its_text_back_and_keeps_the_current_one(drafted):
    editor = User.objects.create_user("ed")
    original_subject = drafted.subject
    keep_version(newsletter=drafted, reason=DraftVersion.Reason.EDITED, user=editor)
    Newsletter.objects.filter(pk=drafted.pk).update(subject="Second thoughts")
    restored = restore_version(version=drafted.versions.get(), user=editor, keep_approval=True)
    assert restored.subject == original_subject
    kept = drafted.versions.first()
    assert (kept.subject, kept.reason, kept.replaced_by) == ("Second thoughts", DraftVersion.Reason.RESTORED, editor)


def test_restoring_the_text_the_draft_already_has_is_refused(drafted):
    version = keep_version(newsletter=drafted, reason=DraftVersion.Reason.EDITED)
    with pytest.raises(RestoreRefused):
        restore_version(version=version, user=None, keep_approval=True)
    assert drafted.versions.count() == 1
