"""An editor's decisions on drafts: approve, reject, or ask Claude for a new draft; what to review next, and the
length warnings that keep subjects and previews readable in an inbox."""
from __future__ import annotations

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from topics import usage as topic_usage

from .models import Batch, DraftFlag, Newsletter
from .running import BrokerUnavailable

REVIEWABLE = Newsletter.DRAFTED_STATUSES
# An approved draft is final: reject it first to ask for another.
REGENERABLE = (Newsletter.Status.GENERATED, Newsletter.Status.REJECTED, Newsletter.Status.FAILED,
               Newsletter.Status.SKIPPED_BUDGET)


# Inboxes cut a subject after about 70 characters and a preview after about 140 (phones show less).
SUBJECT_WARN_CHARS = 70
PREVIEW_WARN_CHARS = 140


class ReviewRefused(Exception):
    """The decision does not apply to the draft as it stands; the message says why, for an editor."""


def length_warnings(*, subject: str, preview_text: str) -> list[str]:
    """What an inbox would cut off: a subject past 70 characters, a preview past 140."""
    warnings = []
    if len(subject) > SUBJECT_WARN_CHARS:
        warnings.append(f"The subject is {len(subject)} characters: inboxes cut it after about {SUBJECT_WARN_CHARS}.")
    if len(preview_text) > PREVIEW_WARN_CHARS:
        warnings.append(f"The preview text is {len(preview_text)} characters: inboxes cut it after about "
                        f"{PREVIEW_WARN_CHARS}.")
    return warnings


def next_to_review(*, after: Newsletter) -> Newsletter | None:
    """The next draft waiting for a decision: later in the same batch first, then the rest of that batch, then
    the oldest other batch's."""
    waiting = Newsletter.objects.filter(status=Newsletter.Status.GENERATED).exclude(pk=after.pk)
    same_batch = waiting.filter(batch_id=after.batch_id)
    return (same_batch.filter(position__gt=after.position).order_by("position", "pk").first()
            or same_batch.order_by("position", "pk").first()
            or waiting.order_by("batch_id", "position", "pk").first())


def review_drafts(*, queryset: QuerySet[Newsletter], status: str, user) -> list[int]:
    """Approve or reject every draft in `queryset` that has text; returns the ids that changed."""
    if status not in (Newsletter.Status.APPROVED, Newsletter.Status.REJECTED):
        raise ValueError(f"not a review decision: {status}")
    with transaction.atomic():
        # Lock the rows: a draft put back in line for a new draft meanwhile must not come out "approved".
        ids = list(
            Newsletter.objects.select_for_update()
            .filter(pk__in=queryset.values("pk"), status__in=REVIEWABLE).exclude(status=status)
            .values_list("pk", flat=True)
        )
        Newsletter.objects.filter(pk__in=ids).update(status=status, reviewed_by=user, reviewed_at=timezone.now())
    return ids


def review_draft(*, newsletter: Newsletter, status: str, user) -> Newsletter:
    """Approve or reject one draft, or ReviewRefused when it has no text to judge yet."""
    changed = review_drafts(queryset=Newsletter.objects.filter(pk=newsletter.pk), status=status, user=user)
    newsletter.refresh_from_db()
    if not changed and newsletter.status != status:
        raise ReviewRefused(f"This item is “{newsletter.get_status_display()}”: there is no draft to "
                            f"{'approve' if status == Newsletter.Status.APPROVED else 'reject'} yet.")
    return newsletter


def request_regeneration(*, newsletter: Newsletter) -> Newsletter:
    """Put the item back in line and queue a new draft after commit; the new attempt is charged to the batch.

    If the broker cannot take the task, the item goes back to what it was and BrokerUnavailable is raised:
    nothing is left waiting for a task that was never queued.
    """
    from .tasks import generate_newsletter_task

    failures: list[BrokerUnavailable] = []
    with transaction.atomic():
        current = Newsletter.objects.select_for_update().select_related("batch").get(pk=newsletter.pk)
        interrupted = current.status == Newsletter.Status.GENERATING and current.lease_expires_at is not None \
            and current.lease_expires_at < timezone.now()
        if current.status not in REGENERABLE and not interrupted:
            raise ReviewRefused(
                f"This item is “{current.get_status_display()}”: only a finished item that is not approved can "
                "be drafted again." + (" Reject it first." if current.status == Newsletter.Status.APPROVED else "")
            )
        if current.batch.budget_stopped or current.batch.status == Batch.Status.BUDGET_EXHAUSTED:
            raise ReviewRefused("This batch was stopped by its budget: resume the batch (with a higher budget) "
                                "to draft its items again.")
        if current.batch.delivery == Batch.Delivery.ECONOMY:
            if not current.batch.is_finished:
                raise ReviewRefused("This batch's drafts are still with Anthropic's batch service: ask for a new "
                                    "draft once the batch has finished.")
            # Drafting tasks take only items of batches drafted now; a new draft is one call, drafted now (as
            # resuming an economy batch does).
            Batch.objects.filter(pk=current.batch_id).update(delivery=Batch.Delivery.NOW)
        previous = {"status": current.status, "error": current.error, "reviewed_by": current.reviewed_by_id,
                    "reviewed_at": current.reviewed_at}
        Newsletter.objects.filter(pk=current.pk).update(
            status=Newsletter.Status.PENDING, error="", claim_token="", reviewed_by=None, reviewed_at=None,
            lease_expires_at=None, interruptions=0, queued_at=timezone.now(),
        )
        topic_usage.mark_taken(topic_ids=[current.topic_id])

        def publish() -> None:
            try:
                generate_newsletter_task.apply_async(args=[current.pk], retry=True)
            except Exception as exc:  # kombu/redis raise several transport errors; all mean "not queued"
                Newsletter.objects.filter(pk=current.pk, status=Newsletter.Status.PENDING).update(
                    status=previous["status"], error=previous["error"], reviewed_by_id=previous["reviewed_by"],
                    reviewed_at=previous["reviewed_at"],
                )
                if previous["status"] not in Newsletter.USED_STATUSES:  # a failed item had freed its topic
                    topic_usage.mark_free(topic_ids=[current.topic_id])
                failures.append(BrokerUnavailable(
                    f"Could not queue the new draft: the task broker is unreachable ({exc.__class__.__name__})."
                ))

        transaction.on_commit(publish)
    if failures:
        raise failures[0]
    newsletter.refresh_from_db()
    return newsletter


# --- flags (issue 9) ---------------------------------------------------------------------------------------------

def open_flags(*, queryset: QuerySet[Newsletter]) -> QuerySet[DraftFlag]:
    """The flags nobody has dismissed yet on the drafts of `queryset`."""
    return DraftFlag.objects.filter(newsletter__in=queryset.values("pk"), dismissed_at__isnull=True)


def dismiss_flag(*, flag: DraftFlag, user) -> bool:
    """Mark a flag checked by `user`, now. False when someone dismissed it already (their name stays)."""
    changed = DraftFlag.objects.filter(pk=flag.pk, dismissed_at__isnull=True).update(
        dismissed_by=user, dismissed_at=timezone.now()
    )
    flag.refresh_from_db()
    return bool(changed)
