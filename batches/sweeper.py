"""The sweeper: every minute it takes back what a crash, a restart or a lost message left behind.

Every step claims its rows with a conditional UPDATE before acting, so any number of sweepers on any number of
machines can run at once: a row is taken back, republished or closed by exactly one of them.
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from topics import discovery
from topics import usage as topic_usage

from . import running
from .generation import replay_spool
from .models import Batch, Newsletter

logger = logging.getLogger("newsroom.sweeper")


@dataclass
class SweepReport:
    replayed: int = 0  # spooled answers written
    requeued_items: int = 0  # items taken back after their lease ran out
    failed_items: int = 0  # items interrupted too often: failed with the reason
    republished_items: int = 0  # items waiting in line whose message was lost
    republished_batches: int = 0  # batches queued (or running without items) that nothing picked up
    closed_batches: int = 0
    closed_discovery_runs: int = 0  # discovery runs left "running" by a crash: stopped, saying why
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def changed_anything(self) -> bool:
        return any(v for k, v in self.as_dict().items() if k != "errors")


def _publish_item(newsletter_id: int, report: SweepReport) -> None:
    from .tasks import generate_newsletter_task

    try:
        generate_newsletter_task.apply_async(args=[newsletter_id], retry=True)
        report.republished_items += 1
    except Exception as exc:  # kombu/redis raise several transport errors; all mean "not queued", try next sweep
        report.errors.append(f"item {newsletter_id} not queued: the task broker is unreachable ({exc.__class__.__name__})")


def _publish_batch(batch_id: int, report: SweepReport) -> None:
    from .tasks import run_batch

    try:
        run_batch.apply_async(args=[batch_id], retry=True)
        report.republished_batches += 1
    except Exception as exc:  # as above
        report.errors.append(f"batch {batch_id} not queued: the task broker is unreachable ({exc.__class__.__name__})")


def take_back_expired(*, now: datetime.datetime, report: SweepReport) -> None:
    """Items whose lease ran out go back in line (their reservations stay: those calls' outcome is unknown)."""
    expired = Newsletter.objects.filter(status=Newsletter.Status.GENERATING, lease_expires_at__lt=now)
    for pk, interruptions in expired.values_list("pk", "interruptions"):
        still_expired = Newsletter.objects.filter(pk=pk, status=Newsletter.Status.GENERATING, lease_expires_at__lt=now)
        if interruptions + 1 >= settings.ITEM_MAX_CLAIMS:
            if still_expired.update(
                status=Newsletter.Status.FAILED, lease_expires_at=None, interruptions=F("interruptions") + 1,
                error=f"Drafting was interrupted {interruptions + 1} times (a worker stopped or lost the database "
                      "mid-draft) and was not tried again. Resume the batch to try once more.",
            ):
                report.failed_items += 1
                topic_usage.mark_free(topic_ids=Newsletter.objects.filter(pk=pk).values("topic"))
            continue
        if still_expired.update(status=Newsletter.Status.PENDING, claim_token="", lease_expires_at=None,
                                interruptions=F("interruptions") + 1, queued_at=now):
            report.requeued_items += 1
            _publish_item(pk, report)


def republish_waiting_items(*, now: datetime.datetime, report: SweepReport) -> None:
    """Items waiting in line for longer than SWEEP_STALE_SECONDS: their message may be lost (a broker restart)."""
    stale = now - datetime.timedelta(seconds=settings.SWEEP_STALE_SECONDS)
    # Economy items are never published as drafting tasks: their batch's submission takes them (batches.economy).
    # A finished batch's items wait too when an editor asked for a new draft of one.
    waiting = Newsletter.objects.filter(status=Newsletter.Status.PENDING,
                                        batch__status__in=(Batch.Status.RUNNING, *Batch.FINAL_STATUSES),
                                        batch__delivery=Batch.Delivery.NOW).filter(
        Q(queued_at__lt=stale) | Q(queued_at__isnull=True, created_at__lt=stale)
    )
    for pk in waiting.values_list("pk", flat=True):
        # The update is the claim: of several sweepers, only the one that moves queued_at publishes.
        if Newsletter.objects.filter(pk=pk, status=Newsletter.Status.PENDING).filter(
            Q(queued_at__lt=stale) | Q(queued_at__isnull=True)
        ).update(queued_at=now):
            _publish_item(pk, report)


def republish_idle_batches(*, now: datetime.datetime, report: SweepReport) -> None:
    """Batches handed to the workers that nothing picked up, or that died before their items were created."""
    stale = now - datetime.timedelta(seconds=settings.SWEEP_STALE_SECONDS)
    idle = Q(status=Batch.Status.QUEUED) & (Q(queued_at__lt=stale) | Q(queued_at__isnull=True, created_at__lt=stale))
    idle |= Q(status=Batch.Status.PENDING, created_at__lt=stale) & (Q(queued_at__lt=stale) | Q(queued_at__isnull=True))
    idle |= Q(status=Batch.Status.RUNNING, newsletters__isnull=True, started_at__lt=stale) & (
        Q(queued_at__lt=stale) | Q(queued_at__isnull=True)
    )
    for pk, status in Batch.objects.filter(idle).values_list("pk", "status").distinct():
        if status == Batch.Status.RUNNING and Newsletter.objects.filter(batch_id=pk).exists():
            continue  # its items were created meanwhile: the item steps look after it
        claimed = Batch.objects.filter(pk=pk, status=status).filter(Q(queued_at__lt=stale) | Q(queued_at__isnull=True))
        # Back to queued, so the republished run_batch task may claim it and select (or fan out) again.
        if claimed.update(status=Batch.Status.QUEUED, queued_at=now):
            _publish_batch(pk, report)


def close_finished_batches(*, report: SweepReport) -> None:
    """Batches whose items have all ended but which nobody closed (the closing task was lost)."""
    candidates = (Batch.objects.filter(status__in=Batch.ACTIVE_STATUSES, newsletters__isnull=False)
                  .exclude(newsletters__status__in=Newsletter.OPEN_STATUSES).values_list("pk", flat=True).distinct())
    for pk in candidates:
        if running.finalize_batch(batch_id=pk):
            report.closed_batches += 1


def sweep(*, now: datetime.datetime | None = None) -> SweepReport:
    """Replay spooled answers, take back expired leases, republish what was lost, close what has ended (batches,
    and discovery runs a crash left "running")."""
    report = SweepReport()
    report.replayed = replay_spool()
    now = now or timezone.now()
    take_back_expired(now=now, report=report)
    republish_waiting_items(now=now, report=report)
    republish_idle_batches(now=now, report=report)
    close_finished_batches(report=report)
    report.closed_discovery_runs = discovery.close_abandoned_runs(now=now)
    if report.changed_anything or report.errors:
        logger.info("sweep: %s", report.as_dict())
    return report
