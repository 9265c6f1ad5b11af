"""Spend at a glance: today, this month, per batch, and a daily series drawn as a server-side SVG chart."""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, DecimalField, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from .ledger import month_bounds, monthly_cap
from .models import Batch, CostLedgerEntry, Newsletter
from .pricing import to_money

ZERO = Decimal("0")
MONEY_FIELD = DecimalField(max_digits=14, decimal_places=6)


@dataclass(frozen=True)
class DaySpend:
    day: datetime.date
    amount_usd: Decimal


@dataclass(frozen=True)
class BatchSpend:
    batch: Batch
    spent_usd: Decimal
    items: int
    drafted: int

    @property
    def percent(self) -> float:
        """The true share of the budget: past 100 when the batch overran it."""
        budget = self.batch.budget_usd
        return round(float(100 * self.spent_usd / budget), 1) if budget else 0.0

    @property
    def bar_percent(self) -> float:
        """The share as the bar draws it: full at most."""
        return min(100.0, self.percent)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    day: datetime.date
    amount_usd: Decimal


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class DayLabel:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    bars: list[Bar]
    ticks: list[Tick]
    labels: list[DayLabel]


@dataclass(frozen=True)
class SpendDashboard:
    today_usd: Decimal
    month_usd: Decimal
    all_time_usd: Decimal
    open_reservations_usd: Decimal
    monthly_cap_usd: Decimal | None
    days: list[DaySpend]
    batches: list[BatchSpend]

    @property
    def monthly_remaining_usd(self) -> Decimal | None:
        cap = self.monthly_cap_usd
        return None if cap is None else max(cap - self.month_usd, ZERO)

    @property
    def monthly_percent(self) -> int | None:
        """The true share of the monthly cap: past 100 when an overrun took the month over it."""
        cap = self.monthly_cap_usd
        return None if not cap else round(100 * self.month_usd / cap)

    @property
    def monthly_bar_percent(self) -> int | None:
        """The share as the bar draws it: full at most."""
        return None if self.monthly_percent is None else min(100, self.monthly_percent)

    @property
    def period_usd(self) -> Decimal:
        return sum((d.amount_usd for d in self.days), ZERO)

    @property
    def chart(self) -> Chart:
        return spend_chart(self.days)


def spend_dashboard(*, days: int = 30, batches: int = 25, now: datetime.datetime | None = None) -> SpendDashboard:
    """Totals, a daily series over the last `days` days and the latest `batches` batches: three queries in all."""
    now = now or timezone.now()
    local_now = timezone.localtime(now)
    today_start = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start, month_end = month_bounds(now)
    first_day = today_start - datetime.timedelta(days=days - 1)

    totals = CostLedgerEntry.objects.aggregate(
        today=Sum("amount_usd", filter=Q(created_at__gte=today_start)),
        month=Sum("amount_usd", filter=Q(created_at__gte=month_start, created_at__lt=month_end)),
        all_time=Sum("amount_usd"),
        open=Sum("amount_usd", filter=Q(status=CostLedgerEntry.Status.RESERVED)),
    )
    per_day = dict(
        CostLedgerEntry.objects.filter(created_at__gte=first_day)
        .annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
        .values_list("day")
        .annotate(total=Sum("amount_usd"))
        .order_by()
    )
    series = [
        DaySpend(day=day, amount_usd=to_money(per_day.get(day) or ZERO))
        for day in (first_day.date() + datetime.timedelta(days=i) for i in range(days))
    ]

    spent = (
        CostLedgerEntry.objects.filter(batch=OuterRef("pk")).values("batch")
        .annotate(total=Sum("amount_usd")).values("total")
    )
    rows = (
        Batch.objects.select_related("created_by")
        .annotate(
            spent_total=Coalesce(Subquery(spent, output_field=MONEY_FIELD), Value(ZERO, output_field=MONEY_FIELD)),
            item_count=Count("newsletters"),
            drafted_count=Count("newsletters", filter=Q(newsletters__status__in=Newsletter.DRAFTED_STATUSES)),
        )
        .order_by("-created_at", "-id")[:batches]
    )
    return SpendDashboard(
        today_usd=to_money(totals["today"] or ZERO),
        month_usd=to_money(totals["month"] or ZERO),
        all_time_usd=to_money(totals["all_time"] or ZERO),
        open_reservations_usd=to_money(totals["open"] or ZERO),
        monthly_cap_usd=monthly_cap(),
        days=series,
        batches=[
            BatchSpend(batch=b, spent_usd=to_money(b.spent_total), items=b.item_count, drafted=b.drafted_count)
            for b in rows
        ],
    )


def _nice_ceiling(value: Decimal) -> Decimal:
    """The smallest of 1, 2, 4, 8 × 10^n at or above `value`: a top for the y axis that splits into round quarters."""
    if value <= 0:
        return Decimal("1")
    exponent = value.adjusted()
    for step in (Decimal("1"), Decimal("2"), Decimal("4"), Decimal("8"), Decimal("10")):
        candidate = step.scaleb(exponent)
        if candidate >= value:
            return candidate
    return Decimal("10").scaleb(exponent)


def _money_label(value: Decimal) -> str:
    if value >= 10 or value == value.to_integral_value():
        return f"${value:,.0f}"
    return f"${value:,.2f}" if value >= Decimal("0.1") else f"${value:,.3f}"


def spend_chart(days: list[DaySpend], *, width: int = 760, height: int = 240) -> Chart:
    """Bar geometry for the daily series, in SVG user units (drawn by the dashboard template)."""
    left, right, top, bottom = 56, width - 12, 12, height - 28
    plot_width, plot_height = right - left, bottom - top
    top_value = _nice_ceiling(max((d.amount_usd for d in days), default=ZERO))
    slot = plot_width / max(len(days), 1)
    bars = []
    for i, day in enumerate(days):
        bar_height = float(day.amount_usd / top_value) * plot_height
        bars.append(Bar(x=round(left + i * slot + slot * 0.15, 2), y=round(bottom - bar_height, 2),
                        width=round(slot * 0.7, 2), height=round(bar_height, 2), day=day.day,
                        amount_usd=day.amount_usd))
    ticks = [Tick(y=round(bottom - plot_height * i / 4, 2), label=_money_label(top_value * i / 4)) for i in range(5)]
    every = max(1, len(days) // 6)
    labels = [
        DayLabel(x=round(left + i * slot + slot / 2, 2), label=day.day.strftime("%b %-d"))
        for i, day in enumerate(days) if (len(days) - 1 - i) % every == 0
    ]
    return Chart(width=width, height=height, plot_left=left, plot_right=right, plot_top=top, plot_bottom=bottom,
                 bars=bars, ticks=ticks, labels=labels)
