"""The cost ledger and the budgets it enforces.

Every paid call is reserved at its worst case before it is made and settled to its actual cost after. The
reservation happens inside a transaction that first locks the rows standing for the budgets involved (the
batch row, and a per-month row when a monthly cap is set), so reservations against one budget are serialised
across every worker process and machine: on PostgreSQL by SELECT ... FOR UPDATE, on SQLite by the IMMEDIATE
transaction mode set in settings, which takes the database write lock at BEGIN.
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from .models import Batch, BudgetLock, CostLedgerEntry
from .pricing import Usage, to_money

logger = logging.getLogger("newsroom.ledger")
ZERO = Decimal("0")


class BudgetExhausted(Exception):
    """A reservation was refused: the call it was for would have crossed a budget."""

    def __init__(self, message: str, *, scope: str):
        self.scope = scope
        super().__init__(message)


def monthly_cap() -> Decimal | None:
    value = settings.MONTHLY_BUDGET_USD
    return Decimal(value) if value not in ("", None) else None


def month_bounds(moment: datetime.datetime | None = None) -> tuple[datetime.datetime, datetime.datetime]:
    """Start and end of the calendar month containing `moment`, in the project's time zone."""
    local = timezone.localtime(moment or timezone.now())
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + datetime.timedelta(days=32)).replace(day=1)
    return start, end


def month_spent(moment: datetime.datetime | None = None) -> Decimal:
    """Spend this calendar month across all batches and discovery, open reservations included."""
    start, end = month_bounds(moment)
    total = CostLedgerEntry.objects.filter(created_at__gte=start, created_at__lt=end).aggregate(t=Sum("amount_usd"))
    return total["t"] or ZERO


def batch_spent(batch_id: int) -> Decimal:
    total = CostLedgerEntry.objects.filter(batch_id=batch_id).aggregate(t=Sum("amount_usd"))["t"]
    return total or ZERO


def newsletter_spent(newsletter_id: int) -> Decimal:
    total = CostLedgerEntry.objects.filter(newsletter_id=newsletter_id).aggregate(t=Sum("amount_usd"))["t"]
    return total or ZERO


def monthly_remaining() -> Decimal | None:
    cap = monthly_cap()
    return None if cap is None else max(cap - month_spent(), ZERO)


def _lock_month(now: datetime.datetime) -> None:
    lock(f"month:{timezone.localtime(now):%Y-%m}")


def lock(key: str) -> None:
    """Hold the named lock row until the surrounding transaction ends (created on first use)."""
    try:
        with transaction.atomic():
            BudgetLock.objects.get_or_create(key=key)
    except IntegrityError:
        pass  # another worker created it between our read and write; it exists now, which is all we need
    BudgetLock.objects.select_for_update().get(key=key)


@dataclass(frozen=True)
class Reservation:
    entry_id: int
    amount_usd: Decimal
    created: bool


def reserve(
    *,
    idempotency_key: str,
    worst_case_usd: Decimal,
    batch_id: int | None = None,
    newsletter_id: int | None = None,
    provider: str = "anthropic",
    model: str = "",
    description: str = "",
) -> Reservation:
    """Reserve `worst_case_usd` for one paid call, or raise BudgetExhausted.

    Idempotent on `idempotency_key`: reserving a key that already has an entry returns that entry and
    reserves nothing more, so a redelivered task cannot charge twice.
    """
    worst_case_usd = to_money(worst_case_usd)
    if worst_case_usd < ZERO:
        raise ValueError("a reservation cannot be negative")
    cap = monthly_cap()
    with transaction.atomic():
        now = timezone.now()
        # Lock order is always month, then batch, so two reservations can never wait on each other in a cycle.
        if cap is not None:
            _lock_month(now)
        batch = Batch.objects.select_for_update().get(pk=batch_id) if batch_id is not None else None
        existing = CostLedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return Reservation(entry_id=existing.pk, amount_usd=existing.amount_usd, created=False)
        if batch is not None:
            spent = batch_spent(batch.pk)
            if spent + worst_case_usd > batch.budget_usd:
                raise BudgetExhausted(
                    f"Batch budget reached: ${spent} spent or reserved of ${batch.budget_usd}; the next call "
                    f"could cost up to ${worst_case_usd}.",
                    scope="batch",
                )
        if cap is not None:
            spent_month = month_spent(now)
            if spent_month + worst_case_usd > cap:
                raise BudgetExhausted(
                    f"Monthly cap reached: ${spent_month} spent or reserved of ${cap} this month; the next "
                    f"call could cost up to ${worst_case_usd}.",
                    scope="month",
                )
        entry = CostLedgerEntry.objects.create(
            idempotency_key=idempotency_key,
            created_at=now,
            provider=provider,
            model=model,
            description=description[:300],
            batch=batch,
            newsletter_id=newsletter_id,
            status=CostLedgerEntry.Status.RESERVED,
            reserved_usd=worst_case_usd,
            amount_usd=worst_case_usd,
        )
    return Reservation(entry_id=entry.pk, amount_usd=worst_case_usd, created=True)


def settle(
    *, entry_id: int, actual_usd: Decimal, usage: Usage | None = None, request_id: str = "", usage_missing: bool = False
) -> bool:
    """Settle a reservation to the call's actual cost. Returns False if it was already settled or released.

    `usage_missing` means the answer reported no usage: the call is settled at its reservation (the most it can
    have cost) and marked, never at $0. A cost above the reservation is recorded as it was (the money was spent)
    and marked as an overrun; it stops further calls in the batch and shows on the batch page.
    """
    actual_usd = to_money(actual_usd)
    with transaction.atomic():
        entry = CostLedgerEntry.objects.select_for_update().only("reserved_usd", "status", "batch_id").get(pk=entry_id)
        if entry.status != CostLedgerEntry.Status.RESERVED:
            return False
        note, usage = "", usage or Usage()
        if usage_missing:
            actual_usd, note = entry.reserved_usd, CostLedgerEntry.Note.USAGE_MISSING
            logger.warning("ledger entry %s: the answer carried no usage; settled at its reservation", entry_id)
        elif actual_usd > entry.reserved_usd:
            note = CostLedgerEntry.Note.OVERRUN
            logger.error("ledger entry %s: actual cost %s exceeds its reservation %s", entry_id, actual_usd,
                         entry.reserved_usd)
            if entry.batch_id is not None:
                Batch.objects.filter(pk=entry.batch_id).update(
                    budget_stopped=True, overrun_usd=F("overrun_usd") + (actual_usd - entry.reserved_usd)
                )
        CostLedgerEntry.objects.filter(pk=entry_id).update(
            status=CostLedgerEntry.Status.SETTLED,
            amount_usd=actual_usd,
            settled_at=timezone.now(),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_write_tokens=usage.cache_write_tokens + usage.cache_write_1h_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            request_id=request_id[:120],
            note=note,
        )
    return True


def release(*, entry_id: int) -> bool:
    """Release a reservation whose call certainly cost nothing (it was refused before any work was done)."""
    changed = CostLedgerEntry.objects.filter(pk=entry_id, status=CostLedgerEntry.Status.RESERVED).update(
        status=CostLedgerEntry.Status.RELEASED, amount_usd=ZERO, settled_at=timezone.now()
    )
    return changed == 1
