"""The spend dashboard: today, this month, per batch, spend over time as server-rendered SVG."""
from __future__ import annotations

import datetime
import itertools
from decimal import Decimal

from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from batches.dashboard import spend_chart, spend_dashboard
from batches.ledger import month_bounds
from batches.models import Batch, CostLedgerEntry
from tests.admin.conftest import csrf_client
from tests.support import record_ledger_entry

DASHBOARD = reverse("admin:batches_costledgerentry_dashboard")
_keys = itertools.count()


def spend(amount: str, *, days_ago: int = 0, batch=None, status=CostLedgerEntry.Status.SETTLED) -> CostLedgerEntry:
    return record_ledger_entry(
        idempotency_key=f"dash:{next(_keys)}", batch=batch, amount_usd=Decimal(amount), reserved_usd=Decimal(amount),
        status=status, created_at=timezone.now() - datetime.timedelta(days=days_ago),
    )


def test_the_dashboard_totals_today_and_this_month(editor_client, make_batch):
    batch = make_batch([], status=Batch.Status.DONE)
    spend("1.250000", batch=batch)
    spend("0.500000", days_ago=1, batch=batch)
    spend("9.000000", days_ago=45, batch=batch)
    data = editor_client.get(DASHBOARD).context["dashboard"]
    first_of_month, _ = month_bounds()
    in_month = Decimal("1.75") if timezone.now() - datetime.timedelta(days=1) >= first_of_month else Decimal("1.25")
    assert data.today_usd == Decimal("1.25")
    assert data.month_usd == in_month
    assert data.all_time_usd == Decimal("10.75")


def test_the_dashboard_shows_each_batchs_spend_against_its_budget(editor_client, make_batch):
    batch = make_batch(["generated", "generated"], budget="0.10", cost="0.020000", status=Batch.Status.DONE)
    response = editor_client.get(DASHBOARD)
    row = next(r for r in response.context["dashboard"].batches if r.batch.pk == batch.pk)
    assert (row.spent_usd, row.percent, row.drafted, row.items) == (Decimal("0.04"), 40, 2, 2)
    assert f'aria-label="Budget used by batch {batch.pk}" aria-valuemin="0" aria-valuemax="100" aria-valuenow="40.0"' \
        in response.content.decode()


def test_a_batch_over_its_budget_shows_its_true_share_and_a_full_bar(editor_client, make_batch):
    batch = make_batch(["generated"], status=Batch.Status.DONE, budget="1", cost="1.500000")
    response = editor_client.get(DASHBOARD)
    assert next(r for r in response.context["dashboard"].batches if r.batch.pk == batch.pk).percent == 150
    page = response.content.decode()
    cell = page[page.index(f'aria-label="Budget used by batch {batch.pk}"'):]
    cell = cell[:cell.index("</td>")]
    assert 'aria-valuenow="100.0"><span style="width: 100.0%">' in cell and "150.0%" in cell and "100.0%<" not in cell


def test_open_reservations_count_as_spend_and_are_shown_apart(editor_client):
    spend("0.300000", status=CostLedgerEntry.Status.RESERVED)
    data = editor_client.get(DASHBOARD).context["dashboard"]
    assert data.today_usd == Decimal("0.3") and data.open_reservations_usd == Decimal("0.3")


def test_the_dashboard_shows_how_much_of_the_monthly_cap_is_used(editor_client, settings):
    settings.MONTHLY_BUDGET_USD = "20"
    spend("5.000000")
    response = editor_client.get(DASHBOARD)
    assert response.context["dashboard"].monthly_percent == 25
    assert "25% of the $20.00 cap · $15.00 left" in response.content.decode()


def test_a_month_over_its_cap_shows_its_true_share_and_a_full_bar(editor_client, settings):
    settings.MONTHLY_BUDGET_USD = "4"
    spend("5.000000")  # an overrun can take the month past its cap
    page = editor_client.get(DASHBOARD).content.decode()
    assert "125% of the $4.00 cap · $0.00 left" in page
    assert ('aria-label="Monthly cap used" aria-valuemin="0" aria-valuemax="100" aria-valuenow="100">'
            '<span style="width: 100%">') in page


def test_the_chart_is_an_inline_svg_with_a_bar_for_each_of_the_last_30_days(editor_client):
    spend("2.000000", days_ago=3)
    page = editor_client.get(DASHBOARD).content.decode()
    svg = page[page.index('<svg class="desk-chart"'):page.index("</svg>", page.index('<svg class="desk-chart"'))]
    assert svg.count('<rect class="bar"') == 30
    day = timezone.localdate() - datetime.timedelta(days=3)
    assert f"{day:%a} {day.day} {day:%b}: $2.00</title>" in svg
    assert "<script" not in page.split("<!-- END SVGs -->")[0].split('<div id="content-main">')[1]


def test_the_chart_scale_tops_out_at_a_round_number_above_the_busiest_day():
    from batches.dashboard import DaySpend

    today = timezone.localdate()
    chart = spend_chart([DaySpend(today - datetime.timedelta(days=1), Decimal("0")),
                         DaySpend(today, Decimal("3.7"))])
    assert [tick.label for tick in chart.ticks] == ["$0", "$1", "$2", "$3", "$4"]
    assert chart.bars[0].height == 0
    assert round(chart.bars[1].height / (chart.plot_bottom - chart.plot_top), 3) == round(3.7 / 4, 3)


def test_days_without_spend_are_in_the_series_as_zero():
    spend("1.000000", days_ago=2)
    days = spend_dashboard(days=5).days
    assert [d.amount_usd for d in days] == [Decimal("0"), Decimal("0"), Decimal("1"), Decimal("0"), Decimal("0")]


def test_the_dashboard_query_count_does_not_grow_with_batches_or_entries(editor_client, make_batch):
    make_batch(["generated"], status=Batch.Status.DONE)
    editor_client.get(DASHBOARD)
    with CaptureQueriesContext(connection) as before:
        editor_client.get(DASHBOARD)
    for i in range(6):
        batch = make_batch(["generated", "failed", "generated"], status=Batch.Status.PARTIAL)
        spend("0.100000", days_ago=i, batch=batch)
    with CaptureQueriesContext(connection) as after:
        editor_client.get(DASHBOARD)
    assert len(after) == len(before)


def test_the_dashboard_needs_permission_to_view_the_ledger(db):
    outsider = User.objects.create_user("outsider", password="x", is_staff=True)
    assert csrf_client(outsider).get(DASHBOARD).status_code == 403


def test_the_ledger_list_links_to_the_dashboard(editor_client):
    page = editor_client.get(reverse("admin:batches_costledgerentry_changelist")).content.decode()
    assert f'href="{DASHBOARD}"' in page
