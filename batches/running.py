"""A batch's life: create, queue or run in-process, select and create its items, finalise exactly once."""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from topics import usage as topic_usage
from topics.selection import select_topics

from . import ledger
from .generation import generate_newsletter
from .models import Batch, EconomyRequest, Newsletter
from .planning import estimate_topics
from .pricing import PriceMissing

logger = logging.getLogger("newsroom.batches")


class BrokerUnavailable(Exception):
    """The task queue could not be reached: nothing was queued."""


def create_batch(
    *,
    size: int,
    budget_usd: Decimal,
    include_new: bool = False,
    topic_ids: Sequence[int] | None = None,
    user=None,
    model: str | None = None,
    delivery: str = Batch.Delivery.NOW,
) -> Batch:
    return Batch.objects.create(
        delivery=delivery,
        size=size,
        budget_usd=budget_usd,
        include_new=include_new,
        candidate_ids=list(topic_ids or []),
        created_by=user,
        model=model or settings.ANTHROPIC_MODEL,
    )


def enqueue_batch(*, batch: Batch) -> None:
    """Hand the batch to the workers. A broker that is down marks the batch failed and raises BrokerUnavailable."""
    from .tasks import run_batch

    Batch.objects.filter(pk=batch.pk, status__in=[Batch.Status.PENDING, Batch.Status.FAILED]).update(
        status=Batch.Status.QUEUED, status_reason="", queued_at=timezone.now()
    )
    try:
        run_batch.apply_async(args=[batch.pk], retry=True)
    except Exception as exc:  # kombu/redis raise several transport errors; all mean "not queued"
        reason = f"Could not queue the batch: the task broker is unreachable ({exc.__class__.__name__}: {exc})."
        batch.refresh_from_db()
        batch.mark_failed(reason)
        raise BrokerUnavailable(reason) from exc
    batch.refresh_from_db()


def start_batch(*, batch_id: int) -> Batch | None:
    """Claim a queued or pending batch, select its topics and create its items. None if someone else has it."""
    claimed = Batch.objects.filter(pk=batch_id, status__in=[Batch.Status.PENDING, Batch.Status.QUEUED]).update(
        status=Batch.Status.RUNNING, started_at=timezone.now(), status_reason=""
    )
    if not claimed:
        return None
    with transaction.atomic():
        # Selections run one at a time: two batches starting together would otherwise both see the same
        # unused topics (neither sees the other's uncommitted items) and pay to draft them twice.
        ledger.lock("selection")
        batch = Batch.objects.select_for_update().get(pk=batch_id)
        if not batch.newsletters.exists():
            topics = select_topics(
                size=batch.size, include_new=batch.include_new, topic_ids=batch.candidate_ids or None
            ).topics
            if not topics:
                batch.mark_failed("Nothing to select: no approved topic is left that no draft has used yet.")
                return batch
            try:
                plan = estimate_topics(topics=topics, model=batch.model, max_tokens=settings.ANTHROPIC_MAX_TOKENS)
            except PriceMissing as exc:
                batch.mark_failed(str(exc))
                return batch
            Newsletter.objects.bulk_create(
                Newsletter(batch=batch, topic=topic, position=i, model=batch.model) for i, topic in enumerate(topics)
            )
            topic_usage.mark_taken(topic_ids=[topic.pk for topic in topics])
            batch.estimated_cost_usd = plan.estimated_cost_usd
            batch.save(update_fields=["estimated_cost_usd"])
    return batch


class NotResumable(Exception):
    """The batch cannot be resumed now; the message says why, for an editor or an operator."""


def in_flight(*, batch_id: int) -> int:
    """Items of the batch being drafted right now: claimed, with a lease that has not run out, or with Anthropic
    inside a Message Batch (economy items have no lease)."""
    return Newsletter.objects.filter(batch_id=batch_id, status=Newsletter.Status.GENERATING).filter(
        Q(lease_expires_at__gte=timezone.now()) | Q(economy_request__state__in=EconomyRequest.OPEN_STATES)
    ).count()


def resume_batch(*, batch: Batch) -> Batch:
    """Put a batch's unfinished items back in line so the batch can run again, from whatever state it was left in.

    Failed and skipped items go back in line, and so do items whose drafting was interrupted (their lease ran
    out). An item that has a draft is never drafted again. A batch with an item still being drafted (its lease
    is live) is refused: that call may yet answer.
    """
    now = timezone.now()
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(pk=batch.pk)
        busy = in_flight(batch_id=locked.pk)
        if busy:
            raise NotResumable(
                f"Batch #{locked.pk} has {busy} item{'s' if busy != 1 else ''} being drafted right now; resume it once "
                "they end (or once their leases run out, when the sweeper takes them back)."
            )
        Newsletter.objects.filter(
            batch=locked, status__in=[Newsletter.Status.FAILED, Newsletter.Status.SKIPPED_BUDGET]
        ).update(status=Newsletter.Status.PENDING, error="", claim_token="", interruptions=0, queued_at=None)
        Newsletter.objects.filter(batch=locked, status=Newsletter.Status.GENERATING, lease_expires_at__lt=now).update(
            status=Newsletter.Status.PENDING, claim_token="", lease_expires_at=None, queued_at=None
        )
        topic_usage.mark_taken(topic_ids=locked.newsletters.values_list("topic_id", flat=True))
        Batch.objects.filter(pk=locked.pk).exclude(status=Batch.Status.PENDING).update(
            status=Batch.Status.PENDING, budget_stopped=False, status_reason="", finished_at=None
        )
        # What an economy batch left undrafted is drafted now when resumed (a new economy batch is another batch).
        Batch.objects.filter(pk=locked.pk).update(delivery=Batch.Delivery.NOW)
    batch.refresh_from_db()
    return batch


def final_status(*, batch: Batch) -> tuple[str, str]:
    counts = batch.newsletters.aggregate(
        drafted=Count("pk", filter=Q(status__in=Newsletter.DRAFTED_STATUSES)),
        failed=Count("pk", filter=Q(status=Newsletter.Status.FAILED)),
        skipped=Count("pk", filter=Q(status=Newsletter.Status.SKIPPED_BUDGET)),
    )
    drafted, failed, skipped = counts["drafted"], counts["failed"], counts["skipped"]
    summary = f"{drafted} drafted, {failed} failed, {skipped} skipped by the budget"
    # An overrun stops the batch (budget_stopped); once resumed, the batch's overrun is history and tells only why
    # it stopped if it stopped again.
    if batch.overrun_usd > 0 and (skipped or batch.budget_stopped):
        return Batch.Status.BUDGET_EXHAUSTED, (
            f"Stopped: answered calls cost ${batch.overrun_usd} more than was reserved for them, so no further call "
            f"was made ({summary})."
        )
    if skipped or batch.budget_stopped:
        return Batch.Status.BUDGET_EXHAUSTED, f"Stopped by the budget: {summary}."
    if failed and drafted:
        return Batch.Status.PARTIAL, f"Finished with failures: {summary}."
    if failed:
        return Batch.Status.FAILED, f"Every item failed: {summary}."
    return Batch.Status.DONE, f"Done: {summary}."


def finalize_batch(*, batch_id: int) -> bool:
    """Close the batch once its last item has ended. True only for the one caller that closed it."""
    if Newsletter.objects.filter(batch_id=batch_id, status__in=Newsletter.OPEN_STATUSES).exists():
        return False
    batch = Batch.objects.get(pk=batch_id)
    if not batch.newsletters.exists():
        return False  # not selected yet: nothing to close
    status, reason = final_status(batch=batch)
    # The conditional update makes finalisation happen exactly once however many items end at the same time.
    closed = Batch.objects.filter(pk=batch_id, status__in=Batch.ACTIVE_STATUSES).update(
        status=status, status_reason=reason, finished_at=timezone.now()
    )
    if not closed:
        # A finished batch whose item was drafted again (an editor asked for a new draft): its outcome follows.
        Batch.objects.filter(pk=batch_id, status__in=Batch.FINAL_STATUSES).exclude(status=status).update(
            status=status, status_reason=reason
        )
    return bool(closed)


def open_item_ids(*, batch_id: int) -> list[int]:
    return list(
        Newsletter.objects.filter(batch_id=batch_id, status=Newsletter.Status.PENDING)
        .order_by("position", "pk")
        .values_list("pk", flat=True)
    )


def run_inline(*, batch: Batch, on_item: Callable[[Newsletter], None] | None = None) -> Batch:
    """Run the whole batch in this process, one item after another (no broker needed)."""
    started = start_batch(batch_id=batch.pk)
    if started is None or started.status == Batch.Status.FAILED:
        batch.refresh_from_db()
        return batch
    token = f"inline-{uuid.uuid4().hex}"
    for newsletter_id in open_item_ids(batch_id=batch.pk):
        # Items still in this process's line are not lost messages: keep the sweeper from republishing them.
        Newsletter.objects.filter(batch_id=batch.pk, status=Newsletter.Status.PENDING).update(queued_at=timezone.now())
        try:
            generate_newsletter(newsletter_id=newsletter_id, token=token)
        except DatabaseError:
            raise  # the database is away: stop here; leases and the sweeper take the batch from where it stands
        except Exception:
            # The item is already marked failed with the reason; the rest of the batch still runs.
            logger.exception("batch %s: item %s stopped by an unexpected error", batch.pk, newsletter_id)
        if on_item is not None:
            on_item(Newsletter.objects.select_related("topic__category").get(pk=newsletter_id))
    finalize_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    return batch
