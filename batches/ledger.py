"""The cost ledger and the budgets it enforces.

Every paid call is reserved at its worst case before it is made and settled to its actual cost after. The
reservation's transaction moves the running totals on the rows standing for the budgets involved (the month's,
then the batch's) by an UPDATE that applies only when the reservation fits, so reservations against one budget
are serialised across every worker process and machine: on PostgreSQL by the row lock that UPDATE takes and
holds to the end of the transaction, on SQLite by the IMMEDIATE transaction mode set in settings, which takes
the database write lock at BEGIN.

Settlements and releases only give money back, so they do not queue on those rows: each writes what it gives
back to its process's LedgerTally slot of the budget (see the model), and a budget's totals are its row plus its
few tallies. A reservation's commit is then the only one that waits on a budget's row.
"""
from __future__ import annotations

import datetime
import functools
import logging
import os
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet, Sum
from django.utils import timezone

from .models import Batch, BudgetLock, CostLedgerEntry, LedgerTally, MonthlySpend
from .pricing import Usage, to_money

logger = logging.getLogger("newsroom.ledger")
ZERO = Decimal("0")
# Tally rows per budget: a settlement writes to the slot of its process, so two worker processes settling at
# once rarely wait on each other, and a budget's totals stay a sum over at most this many rows.
TALLY_SLOTS = 16


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


def batch_scope(batch_id: int) -> str:
    return f"batch:{batch_id}"


def month_scope(key: str) -> str:
    return f"month:{key}"


def tallied(scope: str) -> tuple[Decimal, Decimal]:
    """What settlements and releases gave back to a budget: (total, reserved), both zero or negative."""
    sums = LedgerTally.objects.filter(scope=scope).aggregate(total=Sum("total_usd"), reserved=Sum("reserved_usd"))
    return to_money(sums["total"] or ZERO), to_money(sums["reserved"] or ZERO)


def _row_plus_tallies(row: tuple[Decimal, Decimal] | None, scope: str) -> tuple[Decimal, Decimal]:
    if row is None:
        return ZERO, ZERO
    total, reserved = tallied(scope)
    return to_money(row[0] + total), to_money(row[1] + reserved)


def batch_totals(batch_id: int) -> tuple[Decimal, Decimal]:
    """The batch's ledger total (settled spend plus open reservations) and the open reservations in it."""
    row = Batch.objects.filter(pk=batch_id).values_list("ledger_total_usd", "reserved_open_usd").first()
    return _row_plus_tallies(row, batch_scope(batch_id))


def month_totals(key: str) -> tuple[Decimal, Decimal]:
    """The month's ledger total across all batches and discovery, and the open reservations in it."""
    row = MonthlySpend.objects.filter(month=key).values_list("total_usd", "reserved_usd").first()
    return _row_plus_tallies(row, month_scope(key))


def month_spent(moment: datetime.datetime | None = None) -> Decimal:
    """Spend this calendar month across all batches and discovery, open reservations included."""
    return month_totals(month_key(moment))[0]


def batch_spent(batch_id: int) -> Decimal:
    """The batch's ledger total, open reservations included."""
    return batch_totals(batch_id)[0]


def newsletter_spent(newsletter_id: int) -> Decimal:
    total = CostLedgerEntry.objects.filter(newsletter_id=newsletter_id).aggregate(t=Sum("amount_usd"))["t"]
    return total or ZERO


def monthly_remaining() -> Decimal | None:
    cap = monthly_cap()
    return None if cap is None else max(cap - month_spent(), ZERO)


def _month_entries(key: str) -> tuple[str, list]:
    """The WHERE clause (and its parameters) of the month's ledger entries."""
    start = timezone.make_aware(datetime.datetime.strptime(key, "%Y-%m"))
    end = (start + datetime.timedelta(days=32)).replace(day=1)
    created = connection.ops.quote_name("created_at")
    return (f"{created} >= %s AND {created} < %s",
            [connection.ops.adapt_datetimefield_value(start), connection.ops.adapt_datetimefield_value(end)])


def _month_row_values(key: str) -> dict[str, Decimal]:
    """What the month's row must hold for row + tallies to equal the month's entries (one snapshot of both)."""
    where, params = _month_entries(key)
    total, open_ = _entries_less_tallies(where=where, params=params, scope=month_scope(key))
    return {"total_usd": total, "reserved_usd": open_}


def _ensure_month(key: str) -> None:
    """Create the month's totals row (from the month's committed entries) outside any transaction that moves it,
    so that two workers creating it at once cost one of them an IntegrityError here rather than a reservation."""
    if MonthlySpend.objects.filter(month=key).exists():
        return
    try:
        with transaction.atomic():
            MonthlySpend.objects.create(month=key, **_month_row_values(key))
    except IntegrityError:
        pass  # another worker created it meanwhile


def _recreate_month(key: str) -> MonthlySpend:
    """The row went missing (a flushed database): start it again from the entries as they stand now, this
    transaction's included, so nothing more is added to it afterwards."""
    row, _ = MonthlySpend.objects.update_or_create(month=key, defaults=_month_row_values(key))
    return row


class _MonthRowMissing(RuntimeError):
    """The month's totals row was not there to move (the first reservation of a month, or a flushed database)."""


@functools.cache
def _totals_sql(vendor: str) -> dict[str, str]:
    """The statements that write ledger entries and move the running totals, built once per process.

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
    tally = q(LedgerTally._meta.db_table)
    # What settlements gave back (zero or negative): read with the statement's snapshot, so a tally written since
    # is missed and the total looks higher than it is, never lower.
    given_back = f"COALESCE((SELECT SUM({q('total_usd')}) FROM {tally} WHERE {q('scope')} = %s), 0)"
    entries = q(CostLedgerEntry._meta.db_table)
    columns = ("idempotency_key", "created_at", "provider", "model", "description", "batch_id", "newsletter_id",
               "status", "reserved_usd", "amount_usd", "input_tokens", "output_tokens", "cache_write_tokens",
               "cache_read_tokens", "request_id", "note")
    values = ", ".join(money if name.endswith("_usd") else "%s" for name in columns)
    closes = ("status", "amount_usd", "settled_at", "input_tokens", "output_tokens", "cache_write_tokens",
              "cache_read_tokens", "request_id", "note")
    return {
        "create entry": (f"INSERT INTO {entries} ({', '.join(q(c) for c in columns)}) VALUES ({values}) "
                         f"RETURNING {q('id')}"),
        "lock entry": (f"SELECT {q('reserved_usd')}, {q('status')}, {q('batch_id')}, {q('created_at')} FROM {entries} "
                       f"WHERE {q('id')} = %s" + (" FOR UPDATE" if vendor == "postgresql" else "")),
        "close entry": (f"UPDATE {entries} SET "
                        + ", ".join(f"{q(c)} = {money if c.endswith('_usd') else '%s'}" for c in closes)
                        + f" WHERE {q('id')} = %s"),
        "month": move_month,
        "month within cap": f"{move_month} AND ROUND({q('total_usd')} + {given_back} + {money}, 6) <= {money}",
        "batch": move_batch,
        "batch within budget": (f"{move_batch} AND ROUND({q('ledger_total_usd')} + {given_back} + {money}, 6) "
                                f"<= {q('budget_usd')}"),
        # Two slots (the month's, then the batch's, in that order everywhere) or one, moved in one statement.
        "tally": (f"INSERT INTO {tally} ({q('scope')}, {q('slot')}, {q('total_usd')}, {q('reserved_usd')}) "
                  f"VALUES (%s, %s, {money}, {money}){{more}} ON CONFLICT ({q('scope')}, {q('slot')}) DO UPDATE SET "
                  f"{q('total_usd')} = {tally}.{q('total_usd')} + excluded.{q('total_usd')}, "
                  f"{q('reserved_usd')} = {tally}.{q('reserved_usd')} + excluded.{q('reserved_usd')}"),
    }


def _move(statement: str, params: list) -> bool:
    """Run one of the totals statements; True when it changed its row."""
    with connection.cursor() as cursor:
        cursor.execute(_totals_sql(connection.vendor)[statement], params)
        return cursor.rowcount > 0


def _give_back(*, batch_id: int | None, key: str, total: Decimal, reserved: Decimal) -> None:
    """Take a settled or released entry's change off its month's and batch's totals, in the caller's transaction,
    on this process's tally slots: `total` and `reserved` are zero or negative, so no budget row is locked."""
    if total > ZERO or reserved > ZERO:
        raise ValueError("a tally only gives back; what is added goes on the budget's row")
    slot = os.getpid() % TALLY_SLOTS
    rows = [[month_scope(key), slot, total, reserved]]
    if batch_id is not None:
        rows.append([batch_scope(batch_id), slot, total, reserved])
    statement = _totals_sql(connection.vendor)["tally"].replace(
        "{more}", ", (%s, %s, CAST(%s AS NUMERIC), CAST(%s AS NUMERIC))" * (len(rows) - 1))
    with connection.cursor() as cursor:
        cursor.execute(statement, [value for row in rows for value in row])


def _add_overrun(*, batch_id: int | None, key: str, amount: Decimal) -> None:
    """What a call cost beyond its reservation, added to the budgets' rows (month, then batch) under their locks:
    a tally only ever gives back, so a reservation reading it a moment late can never see too little."""
    if not _move("month", [amount, ZERO, key]):
        _recreate_month(key)
    if batch_id is not None:
        _move("batch", [amount, ZERO, batch_id])


def _take_from_month(*, key: str, amount: Decimal, cap: Decimal | None) -> None:
    """Add a reservation to the month's totals in the caller's transaction; with a cap, only if it stays within."""
    if cap is None:
        if not _move("month", [amount, amount, key]):
            raise _MonthRowMissing(key)
        return
    if _move("month within cap", [amount, amount, key, month_scope(key), amount, cap]):
        return
    # Refused, or no row: look again with the row locked, so a refusal is exact (a settlement may have made room
    # since the statement above) and its message tells the truth.
    row = MonthlySpend.objects.select_for_update().filter(month=key).values_list("total_usd", flat=True).first()
    if row is None:
        raise _MonthRowMissing(key)
    spent = to_money(row + tallied(month_scope(key))[0])
    if spent + amount > cap:
        raise _refusal(scope="month", spent=spent, limit=cap, amount=amount)
    _move("month", [amount, amount, key])


def _take_from_batch(*, batch_id: int, amount: Decimal) -> None:
    """Add a reservation to the batch's totals in the caller's transaction, only if it stays within the budget."""
    if _move("batch within budget", [amount, amount, batch_id, batch_scope(batch_id), amount]):
        return
    batch = Batch.objects.select_for_update().only("budget_usd", "ledger_total_usd").get(pk=batch_id)
    spent = to_money(batch.ledger_total_usd + tallied(batch_scope(batch_id))[0])
    if spent + amount > batch.budget_usd:
        raise _refusal(scope="batch", spent=spent, limit=batch.budget_usd, amount=amount)
    _move("batch", [amount, amount, batch_id])


def _refusal(*, scope: str, spent: Decimal, limit: Decimal, amount: Decimal) -> BudgetExhausted:
    spent, limit, left = to_money(spent), to_money(limit), to_money(max(limit - spent, ZERO))
    if scope == "month":
        return BudgetExhausted(f"Monthly cap reached: ${spent} spent or reserved of ${limit} this month (${left} left); "
                               f"the next call could cost up to ${amount}.", scope="month")
    return BudgetExhausted(f"Batch budget reached: ${spent} spent or reserved of ${limit} (${left} left); the next "
                           f"call could cost up to ${amount}.", scope="batch")


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

    row = [idempotency_key, connection.ops.adapt_datetimefield_value(now), provider, model, description[:300],
           batch_id, newsletter_id, CostLedgerEntry.Status.RESERVED, worst_case_usd, worst_case_usd, 0, 0, 0, 0, "", ""]

    def attempt() -> int:
        if connection.vendor == "postgresql":
            return _reserve_in_postgresql(key=idempotency_key, now=now, provider=provider, model=model,
                                          description=description[:300], batch_id=batch_id,
                                          newsletter_id=newsletter_id, amount=worst_case_usd, month=key, cap=cap)
        with transaction.atomic():
            # The entry is written before any budget row is locked, so the locks are held for as short a time as
            # possible; if the budget refuses, the transaction takes the entry back with it.
            with connection.cursor() as cursor:
                cursor.execute(_totals_sql(connection.vendor)["create entry"], row)
                entry_id = cursor.fetchone()[0]
            # Lock order is always month, then batch (here and for an overrun), so two reservations can never
            # wait on each other in a cycle.
            _take_from_month(key=key, amount=worst_case_usd, cap=cap)
            if batch_id is not None:
                _take_from_batch(batch_id=batch_id, amount=worst_case_usd)
        return entry_id

    try:
        try:
            entry_id = attempt()
        except _MonthRowMissing:
            # The month's first reservation (or its row vanished): create the row outside the transaction, where
            # two workers creating it at once is harmless, and reserve again.
            _ensure_month(key)
            entry_id = attempt()
    except IntegrityError:
        existing = CostLedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
        if existing is None:
            raise
        return Reservation(entry_id=existing.pk, amount_usd=existing.amount_usd, created=False)
    return Reservation(entry_id=entry_id, amount_usd=worst_case_usd, created=True)


def settle(
    *, entry_id: int, actual_usd: Decimal, usage: Usage | None = None, request_id: str = "", usage_missing: bool = False
) -> bool:
    """Settle a reservation to the call's actual cost. Returns False if it was already settled or released.

    `usage_missing` means the answer reported no usage: the call is settled at its reservation (the most it can
    have cost) and marked, never at $0. A cost above the reservation is recorded as it was (the money was spent)
    and marked as an overrun; it stops further calls in the batch and shows on the batch page.
    """
    actual_usd, usage = to_money(actual_usd), usage or Usage()
    if connection.vendor == "postgresql":
        closed, reserved, amount, note = _close_in_postgresql(
            entry_id, status=CostLedgerEntry.Status.SETTLED, actual=actual_usd, usage=usage, request_id=request_id,
            usage_missing=usage_missing)
        if closed:
            _log_settlement(entry_id, note=note, reserved=reserved, amount=amount)
        return closed
    with transaction.atomic():
        entry = _open_entry(entry_id)
        if entry is None:
            return False
        note = ""
        if usage_missing:
            actual_usd, note = entry.reserved_usd, CostLedgerEntry.Note.USAGE_MISSING
        elif actual_usd > entry.reserved_usd:
            note = CostLedgerEntry.Note.OVERRUN
        _log_settlement(entry_id, note=note, reserved=entry.reserved_usd, amount=actual_usd)
        _close_entry(entry_id, status=CostLedgerEntry.Status.SETTLED, amount=actual_usd, usage=usage,
                     request_id=request_id, note=note)
        key, beyond = month_key(entry.created_at), actual_usd - entry.reserved_usd
        _give_back(batch_id=entry.batch_id, key=key, total=min(beyond, ZERO), reserved=-entry.reserved_usd)
        if beyond > ZERO:
            _add_overrun(batch_id=entry.batch_id, key=key, amount=beyond)
        if note == CostLedgerEntry.Note.OVERRUN and entry.batch_id is not None:
            Batch.objects.filter(pk=entry.batch_id).update(
                budget_stopped=True, overrun_usd=F("overrun_usd") + beyond
            )
    return True


def release(*, entry_id: int) -> bool:
    """Release a reservation whose call certainly cost nothing (it was refused before any work was done)."""
    if connection.vendor == "postgresql":
        return _close_in_postgresql(entry_id, status=CostLedgerEntry.Status.RELEASED, actual=ZERO, usage=Usage())[0]
    with transaction.atomic():
        entry = _open_entry(entry_id)
        if entry is None:
            return False
        _close_entry(entry_id, status=CostLedgerEntry.Status.RELEASED, amount=ZERO)
        _give_back(batch_id=entry.batch_id, key=month_key(entry.created_at),
                   total=-entry.reserved_usd, reserved=-entry.reserved_usd)
    return True


def _reserve_in_postgresql(*, key: str, now: datetime.datetime, provider: str, model: str, description: str,
                           batch_id: int | None, newsletter_id: int | None, amount: Decimal, month: str,
                           cap: Decimal | None) -> int:
    """The reservation as one statement (batches migration 0013 holds the function: the same rules as the SQLite
    path above, with one round trip and the budget rows locked only while it runs). Alone it is its own
    transaction; inside the caller's, a savepoint keeps a refused or repeated key from breaking it."""
    def call() -> tuple:
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM newsroom_ledger_reserve(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                           [key, now, provider, model, description, batch_id, newsletter_id, amount, month, cap])
            return cursor.fetchone()

    if connection.in_atomic_block:
        with transaction.atomic():
            entry_id, refused, spent, limit = call()
    else:
        entry_id, refused, spent, limit = call()
    if refused == "month row missing":
        raise _MonthRowMissing(month)
    if refused:
        raise _refusal(scope=refused, spent=spent, limit=limit, amount=amount)
    return entry_id


def _close_in_postgresql(entry_id: int, *, status: str, actual: Decimal, usage: Usage, request_id: str = "",
                         usage_missing: bool = False) -> tuple[bool, Decimal, Decimal, str]:
    """Settle or release as one statement (the function in batches migration 0013): (closed, reserved, amount,
    note); closed is False when the entry was settled or released already."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM newsroom_ledger_close(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", [
            entry_id, status, actual, usage_missing, usage.input_tokens, usage.output_tokens,
            usage.cache_write_tokens + usage.cache_write_1h_tokens, usage.cache_read_tokens, request_id[:120],
            timezone.now(), os.getpid() % TALLY_SLOTS, timezone.get_current_timezone_name()])
        closed, reserved, amount, note, month, month_missing = cursor.fetchone()
    if month_missing:
        _recreate_month(month)  # an overrun in a month whose row went missing: start it again from the entries
    return closed, reserved, amount, note


def _log_settlement(entry_id: int, *, note: str, reserved: Decimal, amount: Decimal) -> None:
    if note == CostLedgerEntry.Note.USAGE_MISSING:
        logger.warning("ledger entry %s: the answer carried no usage; settled at its reservation", entry_id)
    elif note == CostLedgerEntry.Note.OVERRUN:
        logger.error("ledger entry %s: actual cost %s exceeds its reservation %s", entry_id, amount, reserved)


@dataclass(frozen=True)
class _OpenEntry:
    reserved_usd: Decimal
    batch_id: int | None
    created_at: datetime.datetime


def _open_entry(entry_id: int) -> _OpenEntry | None:
    """Lock the entry for the caller's transaction; None when it is settled or released already."""
    with connection.cursor() as cursor:
        cursor.execute(_totals_sql(connection.vendor)["lock entry"], [entry_id])
        row = cursor.fetchone()
    if row is None:
        raise CostLedgerEntry.DoesNotExist(f"no ledger entry {entry_id}")
    reserved, status, batch_id, created_at = row
    if status != CostLedgerEntry.Status.RESERVED:
        return None
    if not isinstance(created_at, datetime.datetime) or timezone.is_naive(created_at):  # as SQLite returns it
        created_at = connection.ops.convert_datetimefield_value(created_at, None, connection)
    return _OpenEntry(reserved_usd=to_money(Decimal(str(reserved))), batch_id=batch_id, created_at=created_at)


def _close_entry(entry_id: int, *, status: str, amount: Decimal, usage: Usage | None = None, request_id: str = "",
                 note: str = "") -> None:
    usage = usage or Usage()
    with connection.cursor() as cursor:
        cursor.execute(_totals_sql(connection.vendor)["close entry"], [
            status, amount, connection.ops.adapt_datetimefield_value(timezone.now()), usage.input_tokens,
            usage.output_tokens, usage.cache_write_tokens + usage.cache_write_1h_tokens, usage.cache_read_tokens,
            request_id[:120], note, entry_id])


@dataclass(frozen=True)
class Drift:
    """A running total that disagrees with the sum of its entries."""

    scope: str  # "batch #12" or "month 2026-12"
    field: str
    kept: Decimal
    summed: Decimal


def _tallies_by_scope() -> dict[str, tuple[Decimal, Decimal]]:
    rows = LedgerTally.objects.values("scope").annotate(total=Sum("total_usd"), reserved=Sum("reserved_usd")).order_by()
    return {row["scope"]: (to_money(row["total"] or ZERO), to_money(row["reserved"] or ZERO)) for row in rows}


def _entries_and_tallies(*, where: str, params: list, scope: str) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """A budget's entries (total, open reservations) and what its tallies gave back (total, reserved), summed in one
    statement, one snapshot: a settlement changes an entry and its tally in one transaction, so the two always
    agree with each other even while settlements go on."""
    q = connection.ops.quote_name
    entries, tally = q(CostLedgerEntry._meta.db_table), q(LedgerTally._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT SUM({q('amount_usd')}) FROM {entries} WHERE {where}), "
            f"(SELECT SUM({q('amount_usd')}) FROM {entries} WHERE {where} AND {q('status')} = %s), "
            f"(SELECT SUM({q('total_usd')}) FROM {tally} WHERE {q('scope')} = %s), "
            f"(SELECT SUM({q('reserved_usd')}) FROM {tally} WHERE {q('scope')} = %s)",
            [*params, *params, CostLedgerEntry.Status.RESERVED, scope, scope])
        total, open_, given_total, given_open = (Decimal(str(v or 0)) for v in cursor.fetchone())
    return total, open_, given_total, given_open


def _entries_less_tallies(*, where: str, params: list, scope: str) -> tuple[Decimal, Decimal]:
    """What a budget's row must hold for row + tallies to equal its entries: (total, open reservations)."""
    total, open_, given_total, given_open = _entries_and_tallies(where=where, params=params, scope=scope)
    return to_money(total - given_total), to_money(open_ - given_open)


def _fix_batch(batch_id: int) -> None:
    """Set the batch's row so that row + tallies equal its entries, under the lock reservations take."""
    with transaction.atomic():
        Batch.objects.select_for_update().filter(pk=batch_id).first()
        total, open_ = _entries_less_tallies(where=f"{connection.ops.quote_name('batch_id')} = %s", params=[batch_id],
                                             scope=batch_scope(batch_id))
        Batch.objects.filter(pk=batch_id).update(ledger_total_usd=total, reserved_open_usd=open_)


def _fix_month(key: str) -> None:
    """The same for a month's row (created if it went missing)."""
    _ensure_month(key)
    with transaction.atomic():
        MonthlySpend.objects.select_for_update().filter(month=key).first()
        MonthlySpend.objects.filter(month=key).update(**_month_row_values(key))


def _confirmed_drifts(*, name: str, rows: QuerySet, fields: tuple[str, str], where: str, params: list,
                      scope: str) -> list[Drift]:
    """A budget's drift as one consistent read sees it: its row locked as reservations lock it (a reservation moves
    the row and adds its entry in one transaction), then its entries and tallies summed in one statement."""
    with transaction.atomic():
        row = rows.select_for_update().values_list(*fields).first()
        total, open_, given_total, given_open = _entries_and_tallies(where=where, params=params, scope=scope)
    kept = (row[0] + given_total, row[1] + given_open) if row else (ZERO, ZERO)
    return [Drift(scope=name, field=field, kept=to_money(k), summed=to_money(summed))
            for field, k, summed in zip(fields, kept, (total, open_)) if to_money(k) != to_money(summed)]


def reconcile(*, fix: bool = False) -> list[Drift]:
    """Compare every running total (batches, months: row plus tallies) with the sum of its ledger entries; with
    `fix`, correct them under the same locks reservations take. An empty list means they all agree.

    One pass reads the tallies, the entries and the rows in separate statements, so a settlement committing
    between them (it changes an entry and its tally together) can look like drift: a total that disagrees in the
    pass is read again consistently, and only a drift that read confirms is reported (and fixed).
    """
    drifts: list[Drift] = []
    reserved = Q(status=CostLedgerEntry.Status.RESERVED)
    tallies = _tallies_by_scope()
    sums = {row["batch_id"]: row for row in CostLedgerEntry.objects.filter(batch__isnull=False).values("batch_id")
            .annotate(total=Sum("amount_usd"), open=Sum("amount_usd", filter=reserved)).order_by()}
    for batch_id, row_total, row_open in Batch.objects.values_list("pk", "ledger_total_usd", "reserved_open_usd"):
        given_total, given_open = tallies.get(batch_scope(batch_id), (ZERO, ZERO))
        row = sums.get(batch_id, {})
        if (to_money(row_total + given_total), to_money(row_open + given_open)) == (
                to_money(row.get("total") or ZERO), to_money(row.get("open") or ZERO)):
            continue
        found = _confirmed_drifts(name=f"batch #{batch_id}", rows=Batch.objects.filter(pk=batch_id),
                                  fields=("ledger_total_usd", "reserved_open_usd"),
                                  where=f"{connection.ops.quote_name('batch_id')} = %s", params=[batch_id],
                                  scope=batch_scope(batch_id))
        drifts += found
        if fix and found:
            _fix_batch(batch_id)
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
        given_total, given_open = tallies.get(month_scope(key), (ZERO, ZERO))
        kept_total, kept_open = (row.total_usd + given_total, row.reserved_usd + given_open) if row else (ZERO, ZERO)
        if (to_money(kept_total), to_money(kept_open)) == (to_money(summed["total"]), to_money(summed["open"])):
            continue
        where, params = _month_entries(key)
        found = _confirmed_drifts(name=f"month {key}", rows=MonthlySpend.objects.filter(month=key),
                                  fields=("total_usd", "reserved_usd"), where=where, params=params,
                                  scope=month_scope(key))
        drifts += found
        if fix and found:
            _fix_month(key)
    return drifts
