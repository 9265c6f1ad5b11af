"""Start batches from the editor's desk: exactly the selection the editor saw, queued after commit; resume stopped ones.

A broker that is down never leaves anything waiting: the new batch is marked failed with the reason (and can be
started again), and a resumed batch's items go back to what they were.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db.models import Q
from django.db import transaction
from django.utils import timezone

from topics import usage as topic_usage

from .ledger import batch_spent, monthly_remaining
from .models import Batch, Newsletter
from .planning import Plan, estimate_topics, plan_batch
from .running import BrokerUnavailable, NotResumable, create_batch, enqueue_batch, in_flight, resume_batch

RESUMABLE = (Batch.Status.FAILED, Batch.Status.PARTIAL, Batch.Status.BUDGET_EXHAUSTED)
REDO_STATUSES = (Newsletter.Status.FAILED, Newsletter.Status.SKIPPED_BUDGET)


def is_resumable(batch: Batch) -> bool:
    """A finished batch that did not draft everything, or one left queued or running with nothing in flight."""
    return why_not_resumable(batch) is None


def why_not_resumable(batch: Batch) -> str | None:
    """Why the batch cannot be resumed now, for an editor or an operator; None when it can."""
    if batch.status in RESUMABLE:
        return None
    if batch.status in Batch.ACTIVE_STATUSES:
        busy = in_flight(batch_id=batch.pk)
        if busy:
            return (f"Batch #{batch.pk} has {busy} item{'s' if busy != 1 else ''} being drafted right now; resume it "
                    "once they end (or once their leases run out and the sweeper takes them back).")
        if is_stuck(batch):
            return None
        return (f"Batch #{batch.pk} is “{batch.get_status_display()}” and still moving: it can be resumed once "
                f"nothing has happened for {settings.SWEEP_STALE_SECONDS} s (the sweeper republishes it by itself).")
    return (f"Batch #{batch.pk} is “{batch.get_status_display()}” and cannot be resumed: only a failed batch, one "
            "stopped part-way, or one left queued or running with nothing in flight can.")


def is_stuck(batch: Batch) -> bool:
    """Queued or running, yet nothing of it is being drafted and nothing has moved for a while (a lost message,
    a crashed worker or database): the sweeper will republish it, and an operator may resume it now."""
    if batch.status not in Batch.ACTIVE_STATUSES or in_flight(batch_id=batch.pk):
        return False
    now = timezone.now()
    if batch.newsletters.filter(status=Newsletter.Status.GENERATING, lease_expires_at__lt=now).exists():
        return True
    moved = max(t for t in (batch.created_at, batch.queued_at, batch.started_at) if t is not None)
    return (now - moved).total_seconds() > settings.SWEEP_STALE_SECONDS
NOTHING_TO_SELECT = ("Nothing to select: no approved topic is left that no draft has used yet. Approve some topics "
                     "(or include unreviewed ones) and try again.")


class LaunchRefused(Exception):
    """The batch cannot start as asked; the message says why, for an editor."""


class SelectionChanged(LaunchRefused):
    """Topics changed between the preview and the confirmation: the editor must look again."""


class BatchNotQueued(BrokerUnavailable):
    """The broker could not take the batch: it exists, marked failed with the reason, and can be resumed."""

    def __init__(self, message: str, *, batch: Batch):
        self.batch = batch
        super().__init__(message)


@dataclass(frozen=True)
class RunOptions:
    size: int
    budget_usd: Decimal
    include_new: bool = False
    topic_ids: tuple[int, ...] = field(default_factory=tuple)
    delivery: str = Batch.Delivery.NOW


def preview_run(*, options: RunOptions) -> Plan:
    """The topics a batch with these options would draft now, and what that could cost (raises PriceMissing)."""
    return plan_batch(size=options.size, include_new=options.include_new, topic_ids=options.topic_ids or None)


def _refuse_when_month_is_spent() -> None:
    remaining = monthly_remaining()
    if remaining is not None and remaining <= 0:
        raise LaunchRefused("This month's spending cap is used up: no draft can be paid for until next month.")


def _publish_after_commit(publish: Callable[[], None], on_failure: Callable[[], None]) -> list[BrokerUnavailable]:
    """Queue after the surrounding transaction commits; the returned list receives the failure, if any."""
    failures: list[BrokerUnavailable] = []

    def run() -> None:
        try:
            publish()
        except BrokerUnavailable as exc:
            on_failure()
            failures.append(exc)

    transaction.on_commit(run)
    return failures


def launch_batch(*, options: RunOptions, confirmed_topic_ids: Sequence[int], user=None) -> Batch:
    """Create a batch of exactly the confirmed selection and queue it once the batch row is committed.

    The selection is taken again and compared with what the editor confirmed: if topics were approved, rejected
    or used meanwhile, SelectionChanged asks for a fresh look instead of drafting something nobody saw.
    Raises BrokerUnavailable (after marking the batch failed) when the queue cannot be reached.
    """
    _refuse_when_month_is_spent()
    plan = preview_run(options=options)
    if not plan.items:
        raise LaunchRefused(NOTHING_TO_SELECT)
    chosen = [topic.pk for topic in plan.topics]
    if chosen != list(confirmed_topic_ids):
        raise SelectionChanged("The selection changed since the preview (topics were approved, rejected or used "
                               "meanwhile). Check it again before confirming.")
    with transaction.atomic():
        # The batch draws only from the confirmed topics, so the workers' selection is the one shown.
        batch = create_batch(size=len(chosen), budget_usd=options.budget_usd, include_new=options.include_new,
                             topic_ids=chosen, user=user, delivery=options.delivery)
        Batch.objects.filter(pk=batch.pk).update(estimated_cost_usd=plan.estimated_cost_usd)
        failures = _publish_after_commit(lambda: enqueue_batch(batch=batch), on_failure=lambda: None)
    batch.refresh_from_db()
    if failures:
        raise BatchNotQueued(str(failures[0]), batch=batch) from failures[0]
    return batch


@dataclass(frozen=True)
class ResumePlan:
    batch: Batch
    spent_usd: Decimal
    redo: list[Newsletter]
    plan: Plan
    reselect: bool  # the batch never got its items: resuming selects afresh
    taken_elsewhere: list[Newsletter] = field(default_factory=list)  # their topic has a draft in another batch

    @property
    def remaining_usd(self) -> Decimal:
        return max(self.batch.budget_usd - self.spent_usd, Decimal("0"))


def plan_resume(*, batch: Batch) -> ResumePlan:
    """What resuming the batch would draft and could cost (raises LaunchRefused, PriceMissing)."""
    refusal = why_not_resumable(batch)
    if refusal:
        raise LaunchRefused(refusal)
    redo = list(batch.newsletters.filter(
        Q(status__in=REDO_STATUSES)
        | Q(status=Newsletter.Status.GENERATING, lease_expires_at__lt=timezone.now())
        | Q(status=Newsletter.Status.PENDING)
    ).select_related("topic__category").order_by("position", "pk"))
    reselect = not redo and not batch.newsletters.exists()
    if reselect:
        plan = plan_batch(size=batch.size, include_new=batch.include_new, topic_ids=batch.candidate_ids or None,
                          model=batch.model)
        if not plan.items:
            raise LaunchRefused(NOTHING_TO_SELECT)
    elif redo:
        plan = estimate_topics(topics=[n.topic for n in redo], model=batch.model,
                               max_tokens=settings.ANTHROPIC_MAX_TOKENS)
    else:
        raise LaunchRefused(f"Batch #{batch.pk} has no failed, skipped or interrupted item left to draft.")
    # A failed or skipped item frees its topic, so another batch may have drafted it meanwhile.
    used = set(
        Newsletter.objects.filter(topic__in=[n.topic_id for n in redo], status__in=Newsletter.USED_STATUSES)
        .exclude(batch=batch).values_list("topic_id", flat=True)
    ) if redo else set()
    return ResumePlan(batch=batch, spent_usd=batch_spent(batch.pk), redo=redo, plan=plan, reselect=reselect,
                      taken_elsewhere=[n for n in redo if n.topic_id in used])


def resume(*, batch: Batch, budget_usd: Decimal | None = None) -> Batch:
    """Put the batch's failed and skipped items back in line (optionally with a new budget) and queue it."""
    _refuse_when_month_is_spent()
    with transaction.atomic():
        locked = Batch.objects.select_for_update().get(pk=batch.pk)
        refusal = why_not_resumable(locked)
        if refusal:
            raise LaunchRefused(refusal)
        if budget_usd is not None and budget_usd != locked.budget_usd:
            spent = batch_spent(locked.pk)
            if budget_usd < spent:
                raise LaunchRefused(f"The budget cannot be set below what this batch has already spent (${spent}).")
            Batch.objects.filter(pk=locked.pk).update(budget_usd=budget_usd)
        snapshot = list(locked.newsletters.filter(status__in=REDO_STATUSES).values_list("pk", "status", "error"))
        try:
            resume_batch(batch=locked)
        except NotResumable as exc:
            raise LaunchRefused(str(exc)) from None

        def put_items_back() -> None:
            # enqueue_batch has marked the batch failed; its items return to what they were, freeing their topics.
            for pk, status, error in snapshot:
                Newsletter.objects.filter(pk=pk, status=Newsletter.Status.PENDING).update(status=status, error=error)
            topic_usage.mark_free(topic_ids=locked.newsletters.filter(status__in=REDO_STATUSES).values("topic"))

        failures = _publish_after_commit(lambda: enqueue_batch(batch=locked), on_failure=put_items_back)
    locked.refresh_from_db()
    if failures:
        raise BatchNotQueued(str(failures[0]), batch=locked) from failures[0]
    return locked
