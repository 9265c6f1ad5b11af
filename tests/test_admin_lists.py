"""newsroom.admin_lists: a bounded count, distinct values through an index, and a date drill-down that agrees with
Django's own."""
from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Max, Min, Sum

from batches.models import CostLedgerEntry
from newsroom.admin_lists import (
    About,
    AtLeast,
    DateDrilldownQuerySet,
    EstimatedCountPaginator,
    bounded_count,
    distinct_values,
    index_order_reads,
)

pytestmark = pytest.mark.django_db
UTC = datetime.UTC


def entries(*moments: datetime.datetime, provider: str = "anthropic", model: str = "m") -> None:
    CostLedgerEntry.objects.bulk_create(
        CostLedgerEntry(idempotency_key=f"{provider}-{model}-{n}-{moment.isoformat()}", created_at=moment,
                        provider=provider, model=model, reserved_usd=Decimal("1"), amount_usd=Decimal("1"))
        for n, moment in enumerate(moments)
    )


def paginator(exact_up_to: int) -> EstimatedCountPaginator:
    pages = EstimatedCountPaginator(CostLedgerEntry.objects.order_by("-created_at", "-id"), 10)
    pages.exact_up_to = exact_up_to
    return pages


def test_a_count_within_the_bound_is_exact():
    entries(*[datetime.datetime(2026, 1, 1, tzinfo=UTC)] * 7)

    count = paginator(7).count

    assert (count, type(count), str(count)) == (7, int, "7")


@pytest.mark.skipif(connection.vendor == "postgresql", reason="SQLite keeps no row estimate")
def test_past_the_bound_sqlite_says_only_that_there_are_more():
    entries(*[datetime.datetime(2026, 1, 1, tzinfo=UTC)] * 12)

    count = paginator(5).count

    assert (count, type(count), str(count)) == (6, AtLeast, "more than 5")
    assert paginator(5).num_pages == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner estimate")
def test_past_the_bound_postgresql_gives_the_planners_estimate():
    entries(*[datetime.datetime(2026, 1, 1, tzinfo=UTC)] * 40)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE batches_costledgerentry")

    count = paginator(5).count

    assert type(count) is About
    assert 30 <= count <= 60
    assert str(count) == f"about {int(count):,}"


def test_distinct_values_lists_each_value_once_in_order_and_leaves_out_blanks():
    moment = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    for provider, model in [("tubelab", ""), ("anthropic", "sonnet"), ("apify", ""), ("anthropic", "haiku")]:
        entries(moment, moment, provider=provider, model=model)

    assert distinct_values(CostLedgerEntry, "provider") == ["anthropic", "apify", "tubelab"]
    assert distinct_values(CostLedgerEntry, "model") == ["haiku", "sonnet"]


def test_distinct_values_of_an_empty_table_are_none():
    assert distinct_values(CostLedgerEntry, "provider") == []


MOMENTS = [
    datetime.datetime(2025, 12, 31, 23, 30, tzinfo=UTC),  # still 2025 in UTC, already 2026 east of it
    datetime.datetime(2026, 1, 1, 0, 30, tzinfo=UTC),
    datetime.datetime(2026, 1, 15, 12, tzinfo=UTC),
    datetime.datetime(2026, 3, 2, 4, tzinfo=UTC),
    datetime.datetime(2026, 3, 2, 23, 59, tzinfo=UTC),
    datetime.datetime(2026, 3, 31, 22, tzinfo=UTC),
    datetime.datetime(2027, 7, 4, 9, tzinfo=UTC),
]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/Los_Angeles"])
@pytest.mark.parametrize(("kind", "narrowing"), [
    ("year", {}), ("month", {"created_at__year": 2026}), ("day", {"created_at__year": 2026, "created_at__month": 3}),
])
def test_the_date_drilldown_finds_the_periods_django_finds(settings, zone, kind, narrowing):
    settings.TIME_ZONE = zone
    entries(*MOMENTS)
    django_own = CostLedgerEntry.objects.filter(**narrowing)

    ours = DateDrilldownQuerySet.adopt(CostLedgerEntry.objects.all()).filter(**narrowing)

    assert list(ours.datetimes("created_at", kind)) == list(django_own.datetimes("created_at", kind))
    assert list(ours.datetimes("created_at", kind, order="DESC")) == list(
        django_own.datetimes("created_at", kind, order="DESC")
    )


def test_the_date_drilldown_reads_first_and_last_dates_as_min_and_max_would():
    entries(*MOMENTS)
    entries(datetime.datetime(2024, 5, 5, tzinfo=UTC), provider="apify")
    ours = DateDrilldownQuerySet.adopt(CostLedgerEntry.objects.all()).filter(provider="anthropic")

    edges = ours.aggregate(first=Min("created_at"), last=Max("created_at"))

    assert edges == {"first": MOMENTS[0], "last": MOMENTS[-1]}
    assert ours.aggregate(total=Sum("amount_usd")) == {"total": Decimal("7")}
    assert DateDrilldownQuerySet.adopt(CostLedgerEntry.objects.none()).aggregate(
        first=Min("created_at"), last=Max("created_at")) == {"first": None, "last": None}


def test_casefolded_distinct_values_list_each_spelling_once():
    moment = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    for provider in ("Apify", "apify", "tubelab"):
        entries(moment, provider=provider)

    assert distinct_values(CostLedgerEntry, "provider", casefold=True) == ["apify", "tubelab"]


def test_a_bounded_count_says_more_past_its_bound():
    entries(*[datetime.datetime(2026, 1, 1, tzinfo=UTC)] * 8)
    ordered = CostLedgerEntry.objects.order_by("-created_at", "-id")

    assert (bounded_count(ordered, 8), type(bounded_count(ordered, 8))) == (8, int)
    assert (bounded_count(ordered, 7), type(bounded_count(ordered, 7)), str(bounded_count(ordered, 7))) == (
        8, AtLeast, "more than 7")


def setting(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT current_setting('{name}')")
        return cursor.fetchone()[0]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="planner settings are PostgreSQL's")
def test_index_order_reads_prices_out_sorts_and_bitmaps_inside_only():
    # The test runs inside a transaction: the block is a savepoint, and must hand the settings back itself.
    assert (setting("enable_sort"), setting("enable_bitmapscan")) == ("on", "on")

    with index_order_reads(connection.alias):
        inside = (setting("enable_sort"), setting("enable_bitmapscan"), setting("enable_seqscan"))

    assert inside == ("off", "off", "on")
    assert (setting("enable_sort"), setting("enable_bitmapscan")) == ("on", "on")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="planner settings are PostgreSQL's")
def test_index_order_reads_hands_the_settings_back_when_the_block_fails():
    with pytest.raises(ZeroDivisionError), index_order_reads(connection.alias):
        1 / 0  # noqa: B018

    assert (setting("enable_sort"), setting("enable_bitmapscan")) == ("on", "on")
