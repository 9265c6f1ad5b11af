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
from django.db.models import F, Q, Sum
from django.utils import timezone

from .models import Batch, BudgetLock, CostLedgerEntry, MonthlySpend
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


def month_key(moment: datetime.datetime | None = None) -> str:
    return f"{timezone.localtime(moment or timezone.now()):%Y-%m}"


def month_spent(moment: datetime.datetime | None = None) -> Decimal:
    """Spend this calendar month across all batches and discovery, open reservations included (one row read)."""
    total = MonthlySpend.objects.filter(month=month_key(moment)).values_list("total_usd", flat=True).first()
    return total if total is not None else ZERO


def batch_spent(batch_id: int) -> Decimal:
    """The batch's ledger total, open reservations included (one row read)."""
    total = Batch.objects.filter(pk=batch_id).values_list("ledger_total_usd", flat=True).first()
    return total if total is not None else ZERO


def newsletter_spent(newsletter_id: int) -> Decimal:
    total = CostLedgerEntry.objects.filter(newsletter_id=newsletter_id).aggregate(t=Sum("amount_usd"))["t"]
    return total or ZERO


def monthly_remaining() -> Decimal | None:
    cap = monthly_cap()
    return None if cap is None else max(cap - month_spent(), ZERO)


def _month_sums(key: str) -> dict[str, Decimal]:
    start = timezone.make_aware(datetime.datetime.strptime(key, "%Y-%m"))
    end = (start + datetime.timedelta(days=32)).replace(day=1)
    sums = CostLedgerEntry.objects.filter(created_at__gte=start, created_at__lt=end).aggregate(
        total=Sum("amount_usd"), reserved=Sum("amount_usd", filter=Q(status=CostLedgerEntry.Status.RESERVED))
    )
    return {"total_usd": sums["total"] or ZERO, "reserved_usd": sums["reserved"] or ZERO}


def _ensure_month(key: str) -> None:
    """Create the month's totals row (from the month's committed entries) before the first transaction that
    moves it, so inside a transaction the row is always there to lock and update."""
    if MonthlySpend.objects.filter(month=key).exists():
        return
    try:
        with transaction.atomic():
            MonthlySpend.objects.create(month=key, **_month_sums(key))
    except IntegrityError:
        pass  # another worker created it meanwhile


def _recreate_month(key: str) -> MonthlySpend:
    """The row went missing (a flushed database): start it again from the entries as they stand now, this
    transaction's included, so nothing more is added to it afterwards."""
    row, _ = MonthlySpend.objects.update_or_create(month=key, defaults=_month_sums(key))
    return row


def _locked_month(key: str) -> tuple[Decimal, bool]:
    """The month's total, its row locked; and whether the row had to be started again (it then already counts
    this transaction's entry)."""
    row = MonthlySpend.objects.select_for_update().filter(month=key).first()
    if row is not None:
        return row.total_usd, False
    return _recreate_month(key).total_usd, True


def _add_to_totals(*, batch_id: int | None, key: str, total: Decimal, reserved: Decimal, month: bool = True) -> None:
    """Move the running totals of the entry's month and batch, in the caller's transaction (month, then batch)."""
    if month and not MonthlySpend.objects.filter(month=key).update(total_usd=F("total_usd") + total,
                                                                   reserved_usd=F("reserved_usd") + reserved):
        _recreate_month(key)
    if batch_id is not None:
        Batch.objects.filter(pk=batch_id).update(ledger_total_usd=F("ledger_total_usd") + total,
                                                 reserved_open_usd=F("reserved_open_usd") + reserved)


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

    The check reads the running totals on the rows it locks (the month when a cap is set, then the batch), so
    it costs the same with ten ledger entries or ten million. Idempotent on `idempotency_key`: reserving a key
    that already has an entry returns that entry and reserves nothing more, so a redelivered task cannot charge
    twice.
    """
    worst_case_usd = to_money(worst_case_usd)
    if worst_case_usd < ZERO:
        raise ValueError("a reservation cannot be negative")
    cap = monthly_cap()
    now = timezone.now()
    key = month_key(now)
    _ensure_month(key)
    try:
        with transaction.atomic():
            # The entry is written before any budget row is locked, so the locks are held for as short a time as
            # possible; if the budget refuses, the transaction takes the entry back with it.
            entry = CostLedgerEntry.objects.create(
                idempotency_key=idempotency_key, created_at=now, provider=provider, model=model,
                description=description[:300], batch_id=batch_id, newsletter_id=newsletter_id,
                status=CostLedgerEntry.Status.RESERVED, reserved_usd=worst_case_usd, amount_usd=worst_case_usd,
            )
            # Lock order is always month, then batch, so two reservations can never wait on each other in a cycle.
            month_counted = False
            if cap is not None:
                spent_month, month_counted = _locked_month(key)
                if month_counted:
                    spent_month -= worst_case_usd  # the restarted row already holds this entry
                if spent_month + worst_case_usd > cap:
                    raise BudgetExhausted(
                        f"Monthly cap reached: ${spent_month} spent or reserved of ${cap} this month "
                        f"(${max(cap - spent_month, ZERO)} left); the next call could cost up to ${worst_case_usd}.",
                        scope="month",
                    )
            # Month before batch, as in settle and release: the rows are always taken in one order.
            _add_to_totals(batch_id=None, key=key, total=worst_case_usd, reserved=worst_case_usd,
                           month=not month_counted)
            if batch_id is not None:
                batch = Batch.objects.select_for_update().only("budget_usd", "ledger_total_usd").get(pk=batch_id)
                spent = batch.ledger_total_usd
                if spent + worst_case_usd > batch.budget_usd:
                    raise BudgetExhausted(
                        f"Batch budget reached: ${spent} spent or reserved of ${batch.budget_usd} "
                        f"(${max(batch.budget_usd - spent, ZERO)} left); the next call could cost up to "
                        f"${worst_case_usd}.",
                        scope="batch",
                    )
                _add_to_totals(batch_id=batch_id, key=key, total=worst_case_usd, reserved=worst_case_usd, month=False)
    except IntegrityError:
        existing = CostLedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
        if existing is None:
            raise
        return Reservation(entry_id=existing.pk, amount_usd=existing.amount_usd, created=False)
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
        entry = (CostLedgerEntry.objects.select_for_update()
                 .only("reserved_usd", "status", "batch_id", "created_at").get(pk=entry_id))
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
        _add_to_totals(batch_id=entry.batch_id, key=month_key(entry.created_at),
                       total=actual_usd - entry.reserved_usd, reserved=-entry.reserved_usd)
        if note == CostLedgerEntry.Note.OVERRUN and entry.batch_id is not None:
            Batch.objects.filter(pk=entry.batch_id).update(
                budget_stopped=True, overrun_usd=F("overrun_usd") + (actual_usd - entry.reserved_usd)
            )
    return True


def release(*, entry_id: int) -> bool:
    """Release a reservation whose call certainly cost nothing (it was refused before any work was done)."""
    with transaction.atomic():
        entry = (CostLedgerEntry.objects.select_for_update()
                 .only("reserved_usd", "status", "batch_id", "created_at").get(pk=entry_id))
        if entry.status != CostLedgerEntry.Status.RESERVED:
            return False
        CostLedgerEntry.objects.filter(pk=entry_id).update(
            status=CostLedgerEntry.Status.RELEASED, amount_usd=ZERO, settled_at=timezone.now()
        )
        _add_to_totals(batch_id=entry.batch_id, key=month_key(entry.created_at),
                       total=-entry.reserved_usd, reserved=-entry.reserved_usd)
    return True


@dataclass(frozen=True)
class Drift:
    """A running total that disagrees with the sum of its entries."""

    scope: str  # "batch #12" or "month 2026-12"
    field: str
    kept: Decimal
    summed: Decimal


def reconcile(*, fix: bool = False) -> list[Drift]:
    """Compare every running total (batches, months) with the sum of its ledger entries; with `fix`, correct them
    under the same locks reservations take. An empty list means they all agree."""
    drifts: list[Drift] = []
    reserved = Q(status=CostLedgerEntry.Status.RESERVED)
    sums = {row["batch_id"]: row for row in CostLedgerEntry.objects.filter(batch__isnull=False).values("batch_id")
            .annotate(total=Sum("amount_usd"), open=Sum("amount_usd", filter=reserved)).order_by()}
    for batch_id, kept_total, kept_open in Batch.objects.values_list("pk", "ledger_total_usd", "reserved_open_usd"):
        row = sums.get(batch_id, {})
        summed_total, summed_open = to_money(row.get("total") or ZERO), to_money(row.get("open") or ZERO)
        for field, kept, summed in (("ledger_total_usd", kept_total, summed_total),
                                    ("reserved_open_usd", kept_open, summed_open)):
            if kept != summed:
                drifts.append(Drift(scope=f"batch #{batch_id}", field=field, kept=kept, summed=summed))
        if fix and (kept_total != summed_total or kept_open != summed_open):
            with transaction.atomic():
                Batch.objects.select_for_update().filter(pk=batch_id).first()
                again = CostLedgerEntry.objects.filter(batch_id=batch_id).aggregate(
                    total=Sum("amount_usd"), open=Sum("amount_usd", filter=reserved))
                Batch.objects.filter(pk=batch_id).update(ledger_total_usd=again["total"] or ZERO,
                                                         reserved_open_usd=again["open"] or ZERO)
    months: dict[str, dict[str, Decimal]] = {}
    for created_at, amount, status in CostLedgerEntry.objects.values_list("created_at", "amount_usd", "status").iterator():
        month = months.setdefault(month_key(created_at), {"total": ZERO, "open": ZERO})
        month["total"] += amount
        if status == CostLedgerEntry.Status.RESERVED:
            month["open"] += amount
    kept_months = {row.month: row for row in MonthlySpend.objects.all()}
    for key in sorted(set(months) | set(kept_months)):
        summed = months.get(key, {"total": ZERO, "open": ZERO})
        row = kept_months.get(key)
        kept_total, kept_open = (row.total_usd, row.reserved_usd) if row else (ZERO, ZERO)
        for field, kept, total in (("total_usd", kept_total, summed["total"]), ("reserved_usd", kept_open, summed["open"])):
            if to_money(kept) != to_money(total):
                drifts.append(Drift(scope=f"month {key}", field=field, kept=kept, summed=to_money(total)))
        if fix and (to_money(kept_total) != to_money(summed["total"]) or to_money(kept_open) != to_money(summed["open"])):
            with transaction.atomic():
                MonthlySpend.objects.select_for_update().filter(month=key).first()
                _recreate_month(key)
    return drifts
