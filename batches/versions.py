"""A draft's earlier texts: kept whenever something replaces the text, viewable and restorable from the draft page.

Generation calls `keep_version` just before a new draft overwrites the old one; the desk calls it before an
editor's save or a restore changes the text. Each reads the text as stored, inside the caller's transaction, so
what is kept is exactly what was about to be lost.
"""
from __future__ import annotations

from django.db import transaction

from .models import DraftVersion, Newsletter

TEXT_FIELDS = ("subject", "preview_text", "body_markdown")


class RestoreRefused(Exception):
    """The version cannot be put back now; the message says why, for an editor."""


def keep_version(*, newsletter: Newsletter, reason: str = DraftVersion.Reason.NEW_DRAFT, user=None
                 ) -> DraftVersion | None:
    """Keep the draft's stored text as a version before it is replaced. Nothing is kept when there is no text yet
    (the first draft replaces nothing)."""
    stored = (Newsletter.objects.filter(pk=newsletter.pk)
              .values(*TEXT_FIELDS, "model", "generated_at").first())
    if stored is None or not any(stored[name] for name in TEXT_FIELDS):
        return None
    return DraftVersion.objects.create(
        newsletter_id=newsletter.pk, subject=stored["subject"], preview_text=stored["preview_text"],
        body_markdown=stored["body_markdown"], model=stored["model"], drafted_at=stored["generated_at"],
        reason=reason, replaced_by=user,
    )


def restore_version(*, version: DraftVersion, user, keep_approval: bool) -> Newsletter:
    """Put a version's text back on its draft; the text it replaces is kept as a version in turn.

    An approved draft stays approved only when `keep_approval` (the restorer may approve): otherwise it goes back
    to "draft ready", so what is exported is always what an approver read. Refused while a new draft is being
    written, which would overwrite the restored text.
    """
    with transaction.atomic():
        newsletter = Newsletter.objects.select_for_update().get(pk=version.newsletter_id)
        if newsletter.status in Newsletter.OPEN_STATUSES:
            raise RestoreRefused("A new draft is being written for this item: restore a version once it is ready.")
        if all(getattr(newsletter, name) == getattr(version, name) for name in TEXT_FIELDS):
            raise RestoreRefused("The draft already has this text: nothing to restore.")
        keep_version(newsletter=newsletter, reason=DraftVersion.Reason.RESTORED, user=user)
        for name in TEXT_FIELDS:
            setattr(newsletter, name, getattr(version, name))
        fields = list(TEXT_FIELDS)
        if newsletter.status == Newsletter.Status.APPROVED and not keep_approval:
            newsletter.status, newsletter.reviewed_by, newsletter.reviewed_at = Newsletter.Status.GENERATED, None, None
            fields += ["status", "reviewed_by", "reviewed_at"]
        newsletter.save(update_fields=fields)
    return newsletter
