"""Admin list pages that stay fast on tables of millions of rows: no full count, no full scan for a filter.

A changelist costs one indexed read of its page, plus whatever it counts. Django counts every matching row for the
paginator and reads every distinct value of a field for an `AllValuesFieldListFilter`: at a million topics each is a
full scan that outweighs the page itself. Here the count is exact up to a bound and estimated past it, and a
field's distinct values are read by skipping through an index.

The page and its bounded count are read in the list's order through an index that has it, never by collecting
every matching row and sorting them: PostgreSQL without planner statistics (autovacuum off, a table just filled)
takes any filter to match 0.5% of the rows and would otherwise gather all 800,000 "new" topics into a bitmap to
sort them for a page of 50 (see `index_order_reads`).
"""
from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.contrib.admin.widgets import RelatedFieldWidgetWrapper
from django.core.paginator import Paginator
from django.db import connections, transaction
from django.db.models import F, Max, Min, Model, QuerySet
from django.db.models.functions import Lower
from django.db.models.sql.where import WhereNode
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.utils.translation import get_language


class AtLeast(int):
    """A count known only to be at least this much (shown as "more than N")."""

    def __str__(self) -> str:
        return f"more than {int(self) - 1:,}"


class About(int):
    """A count the database estimated (shown as "about N")."""

    def __str__(self) -> str:
        return f"about {int(self):,}"


# The plans PostgreSQL may not choose for a list's page and count while other plans exist: a sort of every
# matching row, and a bitmap scan (which gathers every matching row before it returns one).
_UNORDERED_PLANS = ("enable_sort", "enable_bitmapscan")


@contextmanager
def index_order_reads(using: str) -> Iterator[None]:
    """Inside, PostgreSQL reads a query that has an ORDER BY through an index in that order when one exists.

    Without statistics the planner takes "status = 'new'" to match 0.5% of a table, so for 10,001 rows in order
    it prefers a bitmap scan and a sort -- which reads all 800,000 matching rows -- to walking the index that
    already holds them in order and stopping. Pricing sorts and bitmap scans out (SET LOCAL, for this block
    only) leaves the planner the ordered index read, whatever its statistics say; where no index has the order
    (a column sorted by hand) it still sorts, as it must. No effect on SQLite, whose planner prefers an index
    that gives the ORDER BY.

    So every filter of a list read this way needs an index that starts with the filtered column and goes on in
    the list's order: without one, a filter that matches few rows is found by walking the order's index through
    the whole table.
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        yield
        return
    nested = connection.in_atomic_block
    with transaction.atomic(using=using), connection.cursor() as cursor:  # SET LOCAL lasts to the transaction
        settings = ", ".join(f"current_setting('{name}'), set_config('{name}', 'off', true)"
                             for name in _UNORDERED_PLANS)
        cursor.execute(f"SELECT {settings}")
        before = cursor.fetchone()[::2]
        yield  # an exception rolls the block back, and the settings with it
        if nested:  # else the block's own commit ends them
            restore = ", ".join(f"set_config('{name}', %s, true)" for name in _UNORDERED_PLANS)
            cursor.execute(f"SELECT {restore}", before)


def counted_exactly(count: int) -> bool:
    """Whether a list's count is exact, not "more than" or "about" (EstimatedCountPaginator)."""
    return not isinstance(count, AtLeast | About)


def estimated_count(queryset: QuerySet) -> int | None:
    """PostgreSQL's estimate of how many rows `queryset` matches, or None on a database that keeps none.

    The planner starts from pg_class.reltuples, scaled to the table's current size (so it holds even where
    autovacuum has not analysed the table lately), and applies the filters' selectivity: no row is read.
    """
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    sql, params = queryset.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def bounded_count(queryset: QuerySet, bound: int = 10_000) -> int:
    """How many rows `queryset` matches, counted up to `bound`: past it, AtLeast(bound + 1).

    The count keeps the queryset's order, so that (in `index_order_reads`) it reads the first `bound` + 1 rows
    of the index that has that order and stops, where an unordered count may collect every matching row first.
    Order the queryset as an index of its filter is ordered.
    """
    counted = queryset[: bound + 1].count()
    return counted if counted <= bound else AtLeast(counted)


class EstimatedCountPaginator(Paginator):
    """Counts exactly up to `exact_up_to` rows (`bounded_count`, in the list's order); past that, PostgreSQL's
    estimate, and on SQLite only that there are more. Page links past the estimate may show an empty page; no
    count scans the table.

    A page that starts `keys_first_from` rows or more in reads the keys of its rows first, then those rows: the
    rows skipped to reach it are then read as keys from the order's index only, not whole and joined to their
    related rows (on a table of a million, page 200 of a list: 7 ms instead of 60 on PostgreSQL)."""

    exact_up_to = 10_000
    keys_first_from = 1_000

    def page(self, number):
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        queryset = self.object_list
        if bottom < self.keys_first_from or not isinstance(queryset, QuerySet):
            return super().page(number)
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        keys = list(queryset.values_list("pk", flat=True)[bottom:top])
        # The rows by key alone, unordered, then put in the page's order; a queryset still, holding them (the
        # list's form set and template expect one). Ordered, the database might walk the order's index to find
        # them; with the list's filters kept, SQLite read the filter's index for "status = 'new' AND id IN (...)",
        # every new topic of a million (420 ms), where the keys alone are 50 probes of the primary key (1 ms).
        by_key = queryset.order_by()
        by_key.query.where = WhereNode()  # a copy's: the list's own queryset keeps its filters
        found = {row.pk: row for row in by_key.filter(pk__in=keys)}
        rows = queryset.filter(pk__in=keys)
        rows._result_cache = [found[key] for key in keys if key in found]
        return self._get_page(rows, number, self)

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        bounded = bounded_count(queryset, self.exact_up_to)
        if counted_exactly(bounded):
            return bounded
        estimate = estimated_count(queryset)
        return About(estimate) if estimate is not None and estimate > bounded else bounded


class IndexOrderChangeList(ChangeList):
    """A changelist whose count and page are read in `index_order_reads`: the page is fetched there (the template
    then shows the fetched rows) rather than later, when the rendering first touches it, and the admin's
    `annotate_page` reads what it adds to the page's rows in the same block."""

    def get_results(self, request):
        # Not for a search: it reads the table whatever the plan, and a walk in order through every row that the
        # search then rejects is slower than reading the table as it lies.
        with index_order_reads(self.queryset.db) if not self.query else nullcontext():
            super().get_results(request)
            if isinstance(self.result_list, QuerySet):
                self.result_list._fetch_all()
            self.model_admin.annotate_page(request, list(self.result_list))


class LargeListAdmin(admin.ModelAdmin):
    """The settings of a list that may hold millions of rows: a bounded count (none of the whole table), no
    count per filter choice, and the count and page read in index order (IndexOrderChangeList). Filters should
    read no whole table either (DistinctValuesFilter, a bounded choice of related rows)."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice is a scan of the whole table

    def get_changelist(self, request, **kwargs):
        return IndexOrderChangeList

    def annotate_page(self, request, objects: list[Model]) -> None:
        """Add to the rows of a page what the list shows beside their fields (read in index order)."""

    def action_checkbox(self, obj):
        # Django's own checkbox, rendered once (per language) with stand-ins for the row's value and label, which
        # each row then fills in escaped as the template escapes them: a template rendering per row is most of
        # the checkbox column's time.
        html = _action_checkbox_html(get_language())
        return mark_safe(html.replace(_ROW_VALUE, escape(str(obj.pk))).replace(_ROW_LABEL, escape(str(obj))))


_ROW_VALUE, _ROW_LABEL = "__newsroom_row_value__", "__newsroom_row_label__"


class _RowStandIn:
    pk = _ROW_VALUE

    def __str__(self) -> str:
        return _ROW_LABEL


@functools.lru_cache(maxsize=32)
def _action_checkbox_html(language: str | None) -> str:
    return str(admin.ModelAdmin.action_checkbox(None, _RowStandIn()))


def distinct_values(model: type[Model], field_name: str, *, casefold: bool = False) -> list[str]:
    """The distinct non-empty values of a column (lower-cased with `casefold`), read by skipping through an index
    that starts with it (with `casefold`, one on lower(column)).

    A recursive query asks the index for the smallest value, then for the smallest one above it, and so on: one
    short index probe per distinct value (a handful of sources), however many rows share each. Both SQLite and
    PostgreSQL run it; without such an index it would be a scan per value, so keep one.
    """
    connection = connections[model.objects.db]
    quote = connection.ops.quote_name
    table, column = quote(model._meta.db_table), quote(model._meta.get_field(field_name).column)
    key = f"LOWER({column})" if casefold else column
    sql = (
        f"WITH RECURSIVE walk(value) AS ("
        f" SELECT MIN({key}) FROM {table}"
        f" UNION ALL"
        f" SELECT (SELECT MIN({key}) FROM {table} WHERE {key} > walk.value) FROM walk"
        f" WHERE walk.value IS NOT NULL"
        f") SELECT value FROM walk WHERE value IS NOT NULL AND value <> ''"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [row[0] for row in cursor.fetchall()]


class DistinctValuesFilter(admin.SimpleListFilter):
    """A list filter offering each value a column holds, found through its index (`distinct_values`), where
    Django's own `AllValuesFieldListFilter` would read every row. Subclass with `title` and `parameter_name` (the
    field's name); `casefold` offers and matches values case-insensitively, through an index on lower(field)."""

    casefold = False

    def lookups(self, request, model_admin):
        values = distinct_values(model_admin.model, self.parameter_name, casefold=self.casefold)
        return [(value, value) for value in values]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if self.casefold:
            return queryset.alias(_casefolded=Lower(self.parameter_name)).filter(_casefolded=value.lower())
        return queryset.filter(**{self.parameter_name: value})


class DateDrilldownQuerySet(QuerySet):
    """A queryset whose answers to the admin's `date_hierarchy` are read through the date column's index.

    For its drill-down Django asks the list's queryset for the first and last dates (one MIN/MAX query, which
    SQLite answers by reading the whole table) and for the distinct years, months or days (a DISTINCT over every
    row, truncated row by row). Here the first and last dates are one indexed row each, and the periods are found by
    jumping from one to the next: one indexed probe per period shown (a few years, twelve months, 31 days).
    """

    @classmethod
    def adopt(cls, queryset: QuerySet) -> DateDrilldownQuerySet:
        return cls(model=queryset.model, query=queryset.query.chain(), using=queryset._db, hints=queryset._hints)

    def _edge(self, field_name: str, *, last: bool):
        ordered = self.filter(**{f"{field_name}__isnull": False}).order_by(f"-{field_name}" if last else field_name)
        return ordered.values_list(field_name, flat=True).first()

    def aggregate(self, *args, **kwargs):
        first, last = kwargs.get("first"), kwargs.get("last")
        if (not args and set(kwargs) == {"first", "last"} and type(first) is Min and type(last) is Max
                and first.source_expressions == last.source_expressions
                and isinstance(field := first.source_expressions[0], F) and not first.filter and not last.filter):
            return {"first": self._edge(field.name, last=False), "last": self._edge(field.name, last=True)}
        return super().aggregate(*args, **kwargs)

    def datetimes(self, field_name, kind, order="ASC", tzinfo=None):
        if kind not in ("year", "month", "day"):
            return super().datetimes(field_name, kind, order=order, tzinfo=tzinfo)
        zone = tzinfo or timezone.get_current_timezone()
        periods: list[datetime.datetime] = []
        queryset = self.filter(**{f"{field_name}__isnull": False}).order_by(field_name)
        found = queryset.values_list(field_name, flat=True).first()
        while found is not None:
            local = timezone.localtime(found, zone)
            start = datetime.datetime(local.year, 1 if kind == "year" else local.month,
                                      local.day if kind == "day" else 1, tzinfo=zone)
            periods.append(start)
            found = (queryset.filter(**{f"{field_name}__gte": _next_period(start, kind)})
                     .values_list(field_name, flat=True).first())
        return periods if order == "ASC" else periods[::-1]


def _next_period(start: datetime.datetime, kind: str) -> datetime.datetime:
    if kind == "year":
        return start.replace(year=start.year + 1)
    if kind == "month":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    following = (start.replace(tzinfo=None) + datetime.timedelta(days=1))
    return following.replace(tzinfo=start.tzinfo)


class RenderedOncePerValue(RelatedFieldWidgetWrapper):
    """An editable list column's related-object select (with its related-object links), rendered once per value for
    the whole page and given each row's own name and id: fifty rows otherwise render the same select and its option
    templates fifty times, most of a long list's time. The HTML is the same as the widget's own."""

    _ROW = "__newsroom_list_row__"

    @classmethod
    def wrapping(cls, wrapper: RelatedFieldWidgetWrapper, *, rendered: dict[str, str]) -> RenderedOncePerValue:
        """The same widget as `wrapper`, sharing `rendered` (one page's renderings) with every row's copy."""
        widget = cls(wrapper.widget, wrapper.rel, wrapper.admin_site, can_add_related=wrapper.can_add_related,
                     can_change_related=wrapper.can_change_related, can_delete_related=wrapper.can_delete_related,
                     can_view_related=wrapper.can_view_related)
        widget.rendered = rendered
        return widget

    def render(self, name, value, attrs=None, renderer=None):
        if attrs is None or set(attrs) != {"id"} or attrs["id"] != f"id_{name}":
            return super().render(name, value, attrs, renderer)
        key = "" if value is None else str(value)
        if key not in self.rendered:
            self.rendered[key] = str(super().render(self._ROW, value, {"id": f"id_{self._ROW}"}, renderer))
        return mark_safe(self.rendered[key].replace(self._ROW, name))  # the widget's own HTML, escaped by it
