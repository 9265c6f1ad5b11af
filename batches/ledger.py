"""The cost ledger and the budgets it enforces.

Every paid call is reserved at its worst case before it is made and settled to its actual cost after. The
reservation's transaction moves the running totals on the rows standing for the budgets involved (the month's,
then the batch's) by an UPDATE that applies only when the reservation fits, so reservations against one budget
are serialised across every worker process and machine: on PostgreSQL by the row lock that UPDATE takes and
holds to the end of the transaction, on SQLite by the IMMEDIATE transaction mode set in settings, which takes
the database write lock at BEGIN.
"""
from __future__ import annotations

import datetime
import functools
import logging
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
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
    """Create the month's totals row (from the month's committed entries) outside any transaction that moves it,
    so that two workers creating it at once cost one of them an IntegrityError here rather than a reservation."""
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


class _MonthRowMissing(RuntimeError):
    """The month's totals row was not there to move (the first reservation of a month, or a flushed database)."""


@functools.cache
def _totals_sql(vendor: str) -> dict[str, str]:
    """The statements that move the running totals, built once per process.

    They are plain SQL, not QuerySet.update(), because every reservation, settlement and release runs them while
    it holds the budget rows' locks, and compiling the ORM's F() expressions took more CPU than the database
    spent on the statements (issue 12's profile): CPU spent holding a budget lock is time every other worker
    waits. The "within" forms check a budget and take from it in one statement, with no SELECT ... FOR UPDATE
    before: PostgreSQL evaluates the WHERE clause again on the newest committed row once it holds the row's
    lock, and SQLite's IMMEDIATE transactions run one at a time, so the check never sees a stale total.
    ROUND(..., 6) keeps the comparison exact on SQLite, which stores these decimals as doubles, and every amount
    is CAST to NUMERIC because SQLite receives a Decimal as text, and compares any number as less than any text.
    """
    q = connection.ops.quote_name
    money = "CAST(%s AS NUMERIC)"
    move_month = (f"UPDATE {q(MonthlySpend._meta.db_table)} SET {q('total_usd')} = {q('total_usd')} + {money}, "
                  f"{q('reserved_usd')} = {q('reserved_usd')} + {money} WHERE {q('month')} = %s")
    move_batch = (f"UPDATE {q(Batch._meta.db_table)} SET {q('ledger_total_usd')} = {q('ledger_total_usd')} + {money}, "
                  f"{q('reserved_open_usd')} = {q('reserved_open_usd')} + {money} WHERE {q('id')} = %s")
    return {
        "month": move_month,
        "month within cap": f"{move_month} AND ROUND({q('total_usd')} + {money}, 6) <= {money}",
        "batch": move_batch,
        "batch within budget": f"{move_batch} AND ROUND({q('ledger_total_usd')} + {money}, 6) <= {q('budget_usd')}",
    }


def _move(statement: str, params: list) -> bool:
    """Run one of the totals statements; True when it changed its row."""
    with connection.cursor() as cursor:
        cursor.execute(_totals_sql(connection.vendor)[statement], params)
        return cursor.rowcount > 0


def _add_to_totals(*, batch_id: int | None, key: str, total: Decimal, reserved: Decimal) -> None:
    """Move the running totals of the entry's month and batch, in the caller's transaction (month, then batch)."""
    if not _move("month", [total, reserved, key]):
        _recreate_month(key)
    if batch_id is not None:
        _move("batch", [total, reserved, batch_id])


def _take_from_month(*, key: str, amount: Decimal, cap: Decimal | None) -> None:
    """Add a reservation to the month's totals in the caller's transaction; with a cap, only if it stays within."""
    if cap is None:
        if not _move("month", [amount, amount, key]):
            raise _MonthRowMissing(key)
        return
    if _move("month within cap", [amount, amount, key, amount, cap]):
        return
    # Refused, or no row: look again with the row locked, so a refusal is exact (a settlement may have made room
    # since the statement above) and its message tells the truth.
    spent = MonthlySpend.objects.select_for_update().filter(month=key).values_list("total_usd", flat=True).first()
    if spent is None:
        raise _MonthRowMissing(key)
    if spent + amount > cap:
        raise BudgetExhausted(
            f"Monthly cap reached: ${spent} spent or reserved of ${cap} this month "
            f"(${max(cap - spent, ZERO)} left); the next call could cost up to ${amount}.",
            scope="month",
        )
    _move("month", [amount, amount, key])


def _take_from_batch(*, batch_id: int, amount: Decimal) -> None:
    """Add a reservation to the batch's totals in the caller's transaction, only if it stays within the budget."""
    if _move("batch within budget", [amount, amount, batch_id, amount]):
        return
    batch = Batch.objects.select_for_update().only("budget_usd", "ledger_total_usd").get(pk=batch_id)
    spent = batch.ledger_total_usd
    if spent + amount > batch.budget_usd:
        raise BudgetExhausted(
            f"Batch budget reached: ${spent} spent or reserved of ${batch.budget_usd} "
            f"(${max(batch.budget_usd - spent, ZERO)} left); the next call could cost up to ${amount}.",
            scope="batch",
        )
    _move("batch", [amount, amount, batch_id])


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

    The check moves the running totals on the budget rows (the month's, then the batch's) only when the
    reservation fits, one statement a row, so it costs the same with ten ledger entries or ten million.
    Idempotent on `idempotency_key`: reserving a key that already has an entry returns that entry and reserves
    nothing more, so a redelivered task cannot charge twice.
    """
    worst_case_usd = to_money(worst_case_usd)
    if worst_case_usd < ZERO:
        raise ValueError("a reservation cannot be negative")
    cap = monthly_cap()
    now = timezone.now()
    key = month_key(now)

    def attempt() -> CostLedgerEntry:
        with transaction.atomic():
            # The entry is written before any budget row is locked, so the locks are held for as short a time as
            # possible; if the budget refuses, the transaction takes the entry back with it.
            entry = CostLedgerEntry.objects.create(
                idempotency_key=idempotency_key, created_at=now, provider=provider, model=model,
                description=description[:300], batch_id=batch_id, newsletter_id=newsletter_id,
                status=CostLedgerEntry.Status.RESERVED, reserved_usd=worst_case_usd, amount_usd=worst_case_usd,
            )
            # Lock order is always month, then batch (here, in settle and in release), so two reservations can
            # never wait on each other in a cycle.
            _take_from_month(key=key, amount=worst_case_usd, cap=cap)
            if batch_id is not None:
                _take_from_batch(batch_id=batch_id, amount=worst_case_usd)
        return entry

    try:
        try:
            entry = attempt()
        except _MonthRowMissing:
            # The month's first reservation (or its row vanished): create the row outside the transaction, where
            # two workers creating it at once is harmless, and reserve again.
            _ensure_month(key)
            entry = attempt()
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
