"""The cost ledger: reservations against the batch budget and the monthly cap, settled or released after."""
from __future__ import annotations

import datetime
import io
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum

from batches import ledger
from batches.models import Batch, CostLedgerEntry, LedgerTally, MonthlySpend
from batches.pricing import Usage

WORKERS = 16


def make_batch(budget: str) -> Batch:
    return Batch.objects.create(budget_usd=Decimal(budget), model="claude-sonnet-4-6")


def reserve(batch: Batch | None, amount: str, key: str | None = None) -> ledger.Reservation:
    return ledger.reserve(
        idempotency_key=key or uuid.uuid4().hex, worst_case_usd=Decimal(amount),
        batch_id=batch.pk if batch else None,
    )


@pytest.mark.django_db
def test_a_reservation_that_fits_the_budget_is_recorded_at_its_worst_case():
    batch = make_batch("1")

    reservation = reserve(batch, "0.4")

    entry = CostLedgerEntry.objects.get(pk=reservation.entry_id)
    assert (entry.status, entry.reserved_usd, entry.amount_usd) == ("reserved", Decimal("0.4"), Decimal("0.4"))
    assert ledger.batch_spent(batch.pk) == Decimal("0.4")


@pytest.mark.django_db
def test_a_reservation_of_exactly_the_remaining_budget_is_accepted():
    batch = make_batch("1")
    reserve(batch, "0.75")

    reserve(batch, "0.25")

    assert ledger.batch_spent(batch.pk) == Decimal("1")


@pytest.mark.django_db
def test_a_reservation_that_would_cross_the_batch_budget_is_refused():
    batch = make_batch("1")
    reserve(batch, "0.75")

    with pytest.raises(ledger.BudgetExhausted) as refused:
        reserve(batch, "0.250001")

    assert refused.value.scope == "batch"
    assert CostLedgerEntry.objects.filter(batch=batch).count() == 1


@pytest.mark.django_db
def test_open_reservations_count_towards_the_spend():
    batch = make_batch("1")
    settled = reserve(batch, "0.5")
    ledger.settle(entry_id=settled.entry_id, actual_usd=Decimal("0.1"))
    reserve(batch, "0.5")

    assert ledger.batch_spent(batch.pk) == Decimal("0.6")
    with pytest.raises(ledger.BudgetExhausted):
        reserve(batch, "0.5")


@pytest.mark.django_db
def test_reserving_the_same_idempotency_key_twice_reserves_once():
    batch = make_batch("1")

    first = reserve(batch, "0.3", key="newsletter:1:attempt:1:try:0")
    second = reserve(batch, "0.3", key="newsletter:1:attempt:1:try:0")

    assert (first.created, second.created, second.entry_id) == (True, False, first.entry_id)
    assert ledger.batch_spent(batch.pk) == Decimal("0.3")


@pytest.mark.django_db
def test_settling_replaces_the_reservation_with_the_actual_cost_and_usage():
    batch = make_batch("1")
    reservation = reserve(batch, "0.5")

    changed = ledger.settle(
        entry_id=reservation.entry_id, actual_usd=Decimal("0.0123456789"), request_id="req_1",
        usage=Usage(input_tokens=10, output_tokens=20, cache_write_tokens=30, cache_write_1h_tokens=5,
                    cache_read_tokens=40),
    )

    entry = CostLedgerEntry.objects.get(pk=reservation.entry_id)
    assert changed
    assert (entry.status, entry.amount_usd, entry.reserved_usd) == ("settled", Decimal("0.012346"), Decimal("0.5"))
    assert (entry.input_tokens, entry.output_tokens, entry.cache_write_tokens, entry.cache_read_tokens) == (
        10, 20, 35, 40
    )
    assert entry.settled_at is not None and entry.request_id == "req_1"


@pytest.mark.django_db
def test_settling_an_entry_twice_changes_nothing_the_second_time():
    batch = make_batch("1")
    reservation = reserve(batch, "0.5")
    ledger.settle(entry_id=reservation.entry_id, actual_usd=Decimal("0.1"))

    again = ledger.settle(entry_id=reservation.entry_id, actual_usd=Decimal("0.2"))

    assert not again
    assert ledger.batch_spent(batch.pk) == Decimal("0.1")


@pytest.mark.django_db
def test_a_released_reservation_costs_nothing_and_frees_its_budget():
    batch = make_batch("1")
    reservation = reserve(batch, "1")

    assert ledger.release(entry_id=reservation.entry_id)

    assert CostLedgerEntry.objects.get(pk=reservation.entry_id).status == "released"
    assert ledger.batch_spent(batch.pk) == Decimal("0")
    reserve(batch, "1")


@pytest.mark.django_db
def test_a_settled_entry_cannot_be_released():
    batch = make_batch("1")
    reservation = reserve(batch, "0.5")
    ledger.settle(entry_id=reservation.entry_id, actual_usd=Decimal("0.2"))

    assert not ledger.release(entry_id=reservation.entry_id)
    assert ledger.batch_spent(batch.pk) == Decimal("0.2")


@pytest.mark.django_db
def test_a_negative_reservation_is_rejected():
    with pytest.raises(ValueError):
        reserve(make_batch("1"), "-0.01")


@pytest.mark.django_db
def test_the_monthly_cap_refuses_a_reservation_across_batches(settings):
    settings.MONTHLY_BUDGET_USD = "1"
    reserve(make_batch("40"), "0.6")

    with pytest.raises(ledger.BudgetExhausted) as refused:
        reserve(make_batch("40"), "0.5")

    assert refused.value.scope == "month"
    assert ledger.month_spent() == Decimal("0.6")


@pytest.mark.django_db
def test_the_monthly_cap_also_covers_calls_outside_a_batch(settings):
    settings.MONTHLY_BUDGET_USD = "1"
    reserve(None, "0.8")

    with pytest.raises(ledger.BudgetExhausted):
        reserve(make_batch("40"), "0.3")


@pytest.mark.django_db
def test_spend_in_an_earlier_month_does_not_count_against_this_month(settings):
    settings.MONTHLY_BUDGET_USD = "1"
    reserve(None, "0.9")
    start, _ = ledger.month_bounds()
    CostLedgerEntry.objects.update(created_at=start - datetime.timedelta(seconds=1))
    assert ledger.reconcile(fix=True)  # the month totals follow the entries moved by hand

    reserve(None, "0.9")

    assert ledger.month_spent() == Decimal("0.9")
    assert ledger.monthly_remaining() == Decimal("0.1")


@pytest.mark.parametrize("cap", ["", "0.3"])
@pytest.mark.django_db
def test_reservations_that_add_up_exactly_to_a_budget_are_accepted(settings, cap):
    # 0.1 + 0.2 is not 0.3 in binary floating point, which is how SQLite keeps these decimals.
    settings.MONTHLY_BUDGET_USD = cap
    batch = make_batch("0.3")
    reserve(batch, "0.1")

    reserve(batch, "0.2")

    assert ledger.batch_spent(batch.pk) == Decimal("0.3")
    with pytest.raises(ledger.BudgetExhausted):
        reserve(batch, "0.000001")


@pytest.mark.parametrize("cap", ["", "1"])
@pytest.mark.django_db
def test_a_reservation_whose_month_has_no_totals_row_starts_it_from_the_month_entries(settings, cap):

    settings.MONTHLY_BUDGET_USD = cap
    batch = make_batch("10")
    reserve(batch, "0.5")
    MonthlySpend.objects.all().delete()  # as at a month's first reservation, or after a flush

    reserve(batch, "0.25")

    assert ledger.month_spent() == Decimal("0.75")
    assert ledger.reconcile() == []


@pytest.mark.django_db
def test_no_monthly_cap_means_no_monthly_limit(settings):
    settings.MONTHLY_BUDGET_USD = ""

    reserve(None, "1000")

    assert ledger.monthly_cap() is None and ledger.monthly_remaining() is None


def hammer(*, batch_ids: list[int | None], worst_case: Decimal, actual: Decimal) -> list[int]:
    """WORKERS threads reserve and settle against `batch_ids` until refused; returns calls made per thread.

    Every third call is left reserved, as a call whose outcome is unknown would be. Each thread has its own
    database connection, so the serialisation under test is the database's, not Python's.
    """
    start = threading.Barrier(WORKERS)

    def work(number: int) -> int:
        calls = 0
        try:
            start.wait(timeout=30)
            while True:
                try:
                    reservation = ledger.reserve(
                        idempotency_key=f"hammer:{number}:{calls}:{uuid.uuid4().hex}", worst_case_usd=worst_case,
                        batch_id=batch_ids[number % len(batch_ids)], description=f"thread {number}",
                    )
                except ledger.BudgetExhausted:
                    return calls
                calls += 1
                if calls % 3:
                    ledger.settle(entry_id=reservation.entry_id, actual_usd=actual)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(work, range(WORKERS), timeout=120))


@pytest.mark.parametrize("round_", range(3))
@pytest.mark.django_db(transaction=True)
def test_sixteen_workers_hammering_one_small_budget_never_take_the_ledger_over_it(round_):
    batch = make_batch("0.5")
    worst_case = Decimal("0.031") + Decimal(round_) / 1000

    calls = hammer(batch_ids=[batch.pk], worst_case=worst_case, actual=Decimal("0.004"))

    spent = ledger.batch_spent(batch.pk)
    assert spent <= batch.budget_usd
    assert batch.budget_usd - spent < worst_case  # every worker stopped only because the budget was full
    assert sum(calls) == CostLedgerEntry.objects.filter(batch=batch).count() > WORKERS
    assert spent == CostLedgerEntry.objects.filter(batch=batch).aggregate(t=Sum("amount_usd"))["t"]
    assert ledger.reconcile() == []  # the running totals agree with the entries after the race


@pytest.mark.parametrize("round_", range(3))
@pytest.mark.django_db(transaction=True)
def test_sixteen_workers_on_many_batches_never_take_the_month_over_its_cap(settings, round_):
    settings.MONTHLY_BUDGET_USD = "0.4"
    batch_ids = [make_batch("40").pk for _ in range(WORKERS // 2)] + [None]
    worst_case = Decimal("0.023") + Decimal(round_) / 1000

    calls = hammer(batch_ids=batch_ids, worst_case=worst_case, actual=Decimal("0.003"))

    spent = ledger.month_spent()
    assert spent <= Decimal("0.4")
    assert Decimal("0.4") - spent < worst_case
    assert sum(calls) == CostLedgerEntry.objects.count() > WORKERS
    assert ledger.reconcile() == []


@pytest.mark.django_db(transaction=True)
def test_batches_starting_at_the_same_moment_never_draft_the_same_topic(migration_data, topics_in_every_category):
    from batches import running
    from batches.models import Newsletter

    workers = len(topics_in_every_category)
    batches = [running.create_batch(size=1, budget_usd=Decimal("40")) for _ in range(workers)]
    start = threading.Barrier(workers)

    def begin(batch_id: int) -> None:
        try:
            start.wait(timeout=10)
            running.start_batch(batch_id=batch_id)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(begin, [b.pk for b in batches]))

    topics = list(Newsletter.objects.values_list("topic_id", flat=True))
    assert len(topics) == workers
    assert len(set(topics)) == workers


# --- running totals ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_reservation_reads_one_row_whatever_the_size_of_the_ledger():
    from django.db import connection as conn
    from django.test.utils import CaptureQueriesContext

    batch = make_batch("1000")
    CostLedgerEntry.objects.bulk_create(
        CostLedgerEntry(idempotency_key=f"old:{i}", batch=batch, status=CostLedgerEntry.Status.SETTLED,
                        reserved_usd=Decimal("0.01"), amount_usd=Decimal("0.01")) for i in range(2000)
    )
    ledger.reconcile(fix=True)
    for _ in range(50):  # settlements give back on their process's tally slot, not on a row per entry
        ledger.settle(entry_id=reserve(batch, "0.02").entry_id, actual_usd=Decimal("0.01"))
    reserve(batch, "0.02")  # the month's row exists from here on

    with CaptureQueriesContext(conn) as captured:
        reserve(batch, "0.02")

    sql = " ".join(q["sql"].upper() for q in captured.captured_queries)
    assert "COUNT(" not in sql
    assert "SUM(" not in sql.replace('SUM("TOTAL_USD") FROM "BATCHES_LEDGERTALLY"', "")  # never over the entries
    assert len(captured.captured_queries) <= 8
    assert LedgerTally.objects.filter(scope=ledger.batch_scope(batch.pk)).count() <= ledger.TALLY_SLOTS
    assert ledger.batch_spent(batch.pk) == Decimal("20.54")
    assert ledger.reconcile() == []


@pytest.mark.django_db
def test_totals_follow_reserve_settle_and_release_exactly():
    batch = make_batch("10")
    kept = reserve(batch, "0.5")
    settled = reserve(batch, "0.5")
    released = reserve(batch, "0.5")
    ledger.settle(entry_id=settled.entry_id, actual_usd=Decimal("0.123456"))
    ledger.release(entry_id=released.entry_id)

    assert ledger.batch_totals(batch.pk) == (Decimal("0.623456"), Decimal("0.5"))
    assert ledger.month_spent() == Decimal("0.623456")
    assert ledger.reconcile() == []
    assert kept.created


@pytest.mark.django_db
def test_reconcile_finds_a_total_that_drifted_and_fix_corrects_it(capsys):
    from django.core.management import CommandError, call_command

    batch = make_batch("10")
    reserve(batch, "0.5")
    Batch.objects.filter(pk=batch.pk).update(ledger_total_usd=Decimal("0.1"))

    with pytest.raises(CommandError):
        call_command("reconcile_ledger")
    assert f"batch #{batch.pk}: ledger_total_usd is 0.100000, its entries sum to 0.500000" in capsys.readouterr().out

    call_command("reconcile_ledger", "--fix")
    assert ledger.batch_spent(batch.pk) == Decimal("0.5")
    call_command("reconcile_ledger")
    assert "agrees" in capsys.readouterr().out


@pytest.mark.django_db
@pytest.mark.parametrize("options", [[], ["--fix"]])
def test_a_settlement_committing_while_reconcile_reads_is_not_reported_as_drift(monkeypatch, options):
    from django.core.management import call_command

    batch = make_batch("1")
    reservation = reserve(batch, "0.5")
    read_tallies = ledger._tallies_by_scope

    def tallies_then_a_worker_settles():
        tallies = read_tallies()
        ledger.settle(entry_id=reservation.entry_id, actual_usd=Decimal("0.1"))
        return tallies

    monkeypatch.setattr(ledger, "_tallies_by_scope", tallies_then_a_worker_settles)
    out = io.StringIO()
    call_command("reconcile_ledger", "--json", *options, stdout=out)  # a drift without --fix raises CommandError

    assert json.loads(out.getvalue()) == {"agree": True, "fixed": False, "drifts": []}
    monkeypatch.undo()
    assert ledger.reconcile() == []
    assert ledger.batch_totals(batch.pk) == (Decimal("0.1"), Decimal("0"))
    assert ledger.month_totals(ledger.month_key()) == (Decimal("0.1"), Decimal("0"))


@pytest.mark.django_db
def test_an_overrun_goes_on_the_budget_rows_and_a_tally_only_ever_gives_back():
    batch = make_batch("10")
    over = reserve(batch, "0.1")
    under = reserve(batch, "0.1")

    ledger.settle(entry_id=over.entry_id, actual_usd=Decimal("0.25"))
    ledger.settle(entry_id=under.entry_id, actual_usd=Decimal("0.04"))

    assert ledger.batch_totals(batch.pk) == (Decimal("0.29"), Decimal("0"))
    assert ledger.month_spent() == Decimal("0.29")
    tallies = LedgerTally.objects.filter(scope=ledger.batch_scope(batch.pk))
    assert tallies.exists() and all(t.total_usd <= 0 and t.reserved_usd <= 0 for t in tallies)
    Batch.objects.filter(pk=batch.pk).update(ledger_total_usd=Decimal("0.15"))  # the overrun went on the row
    assert ledger.reconcile(fix=True)  # found (and corrected) the row moved by hand
    assert ledger.reconcile() == [] and ledger.batch_spent(batch.pk) == Decimal("0.29")


@pytest.mark.django_db
def test_a_tally_that_would_add_to_a_budget_is_refused_by_the_database():
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        LedgerTally.objects.create(scope="batch:1", slot=0, total_usd=Decimal("0.01"))


@pytest.mark.django_db
def test_reconcile_fix_keeps_what_settlements_gave_back():
    batch = make_batch("10")
    for actual in ("0.01", "0.02"):
        ledger.settle(entry_id=reserve(batch, "0.5").entry_id, actual_usd=Decimal(actual))
    ledger.release(entry_id=reserve(batch, "0.5").entry_id)
    reserve(batch, "0.5")
    Batch.objects.filter(pk=batch.pk).update(ledger_total_usd=Decimal("7"), reserved_open_usd=Decimal("3"))
    MonthlySpend.objects.update(total_usd=Decimal("9"))

    assert {d.field for d in ledger.reconcile(fix=True)} == {"ledger_total_usd", "reserved_open_usd", "total_usd"}

    assert ledger.reconcile() == []
    assert ledger.batch_totals(batch.pk) == (Decimal("0.53"), Decimal("0.5"))
    assert ledger.month_totals(ledger.month_key()) == (Decimal("0.53"), Decimal("0.5"))


@pytest.mark.django_db(transaction=True)
def test_a_settlement_does_not_wait_for_a_reservation_holding_the_batch_row():
    """Reservations queue on the batch's row; settlements must not queue behind them (issue 12)."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has one writer at a time: every transaction waits for every other")
    batch = make_batch("10")
    entry = reserve(batch, "0.5")
    holding, release_it = threading.Event(), threading.Event()

    def hold_the_row():
        from django.db import transaction

        try:
            with transaction.atomic():
                Batch.objects.select_for_update().get(pk=batch.pk)  # as a reservation in flight does
                holding.set()
                release_it.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert holding.wait(timeout=10)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '3s'")  # waiting on the row would fail the settlement
        try:
            assert ledger.settle(entry_id=entry.entry_id, actual_usd=Decimal("0.1"))
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = 0")
    finally:
        release_it.set()
        holder.join(timeout=30)
    assert ledger.batch_totals(batch.pk) == (Decimal("0.1"), Decimal("0"))
    assert ledger.reconcile() == []


@pytest.mark.django_db
def test_on_postgresql_a_reservation_and_a_settlement_are_one_statement_each():
    """One round trip each, so the budget rows are held only while the function runs (batches migration 0013)."""
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "postgresql":
        pytest.skip("the functions are PostgreSQL's; SQLite runs the same rules statement by statement")
    batch = make_batch("10")
    reserve(batch, "0.1")  # the month's row exists from here on

    with CaptureQueriesContext(connection) as reserving:
        entry = reserve(batch, "0.5")
    with CaptureQueriesContext(connection) as settling:
        ledger.settle(entry_id=entry.entry_id, actual_usd=Decimal("0.2"))

    statements = [q["sql"].split("(")[0] for q in reserving.captured_queries + settling.captured_queries
                  if "SAVEPOINT" not in q["sql"]]  # the test's own transaction makes the reservation take one
    assert statements == ["SELECT * FROM newsroom_ledger_reserve", "SELECT * FROM newsroom_ledger_close"]
    assert ledger.batch_totals(batch.pk) == (Decimal("0.3"), Decimal("0.1"))
    assert ledger.reconcile() == []
