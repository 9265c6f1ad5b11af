"""The desk's long lists (topics, cost ledger, drafts): a fixed number of queries however long the table, no count
of the whole table, and filters that read no whole table (issue 12)."""
from __future__ import annotations

import functools
import re
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.admin.widgets import RelatedFieldWidgetWrapper
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from batches.models import Batch, CostLedgerEntry, Newsletter
from newsroom import admin_lists as admin_lists_module
from newsroom.admin_lists import EstimatedCountPaginator, LargeListAdmin, RenderedOncePerValue, index_order_reads
from topics.models import Topic

TOPICS = reverse("admin:topics_topic_changelist")
LEDGER = reverse("admin:batches_costledgerentry_changelist")
DRAFTS = reverse("admin:batches_newsletter_changelist")
SOURCES = ("reddit", "perplexity", "tubelab", "apify", "import")


def add_topics(categories, count: int, *, start: int = 0) -> None:
    category = list(categories.values())
    Topic.objects.bulk_create(
        Topic(title=f"Bench topic {n}", source=SOURCES[n % len(SOURCES)], external_id=f"t{n}", score=n % 97,
              category=category[n % len(category)], status="approved" if n % 3 else "new")
        for n in range(start, start + count)
    )


def add_ledger_entries(count: int, *, start: int = 0) -> None:
    CostLedgerEntry.objects.bulk_create(
        CostLedgerEntry(idempotency_key=f"k{n}", provider=("anthropic", "perplexity")[n % 2],
                        model=("claude-sonnet-4-5", "sonar")[n % 2], status="settled",
                        reserved_usd=Decimal("0.02"), amount_usd=Decimal("0.01"))
        for n in range(start, start + count)
    )


def queries_for(client, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return [query["sql"] for query in queries.captured_queries]


def whole_table_counts(sql: list[str], table: str) -> list[str]:
    """COUNT queries over `table` that no LIMIT bounds."""
    return [q for q in sql if re.search(r"COUNT\(", q, re.IGNORECASE) and f'"{table}"' in q and " LIMIT " not in q.upper()]


@pytest.fixture
def bounded(monkeypatch):
    """Lists count exactly only up to 5 rows, so a few dozen rows stand for a large table."""
    monkeypatch.setattr(EstimatedCountPaginator, "exact_up_to", 5)


@pytest.mark.parametrize("query", ["", "?status__exact=new", "?source=reddit", "?category_locked__exact=1", "?p=2"])
def test_the_topic_list_makes_as_many_queries_with_300_topics_as_with_60(admin_client, categories, bounded, query):
    add_topics(categories, 60)  # more than one page of 50, so that "?p=2" is a real page in both cases
    admin_client.get(TOPICS + query)
    few = len(queries_for(admin_client, TOPICS + query))

    add_topics(categories, 240, start=60)

    assert len(queries_for(admin_client, TOPICS + query)) == few


@pytest.mark.parametrize("query", ["", "?status__exact=approved", "?source=apify", "?category__id__exact=1"])
def test_the_topic_list_never_counts_the_whole_topic_table(admin_client, categories, bounded, query):
    add_topics(categories, 120)

    sql = queries_for(admin_client, TOPICS + query)

    assert any(re.search(r"COUNT\(", q) and '"topics_topic"' in q for q in sql)  # the bounded count is there
    assert whole_table_counts(sql, "topics_topic") == []


def test_a_topic_list_longer_than_the_bound_says_how_many_it_knows_of(admin_client, categories, bounded):
    add_topics(categories, 60)

    page = admin_client.get(TOPICS).content.decode()

    assert "more than 5 topics" in page or re.search(r"about [\d,]+ topics", page)


def test_a_short_topic_list_gives_its_exact_count(admin_client, categories):
    add_topics(categories, 12)

    assert "12 topics" in admin_client.get(TOPICS).content.decode()


def test_the_source_filter_offers_each_source_once_and_filters_by_it(admin_client, categories):
    add_topics(categories, 25)

    page = admin_client.get(TOPICS).content.decode()
    filtered = admin_client.get(TOPICS + "?source=tubelab").context["cl"].result_list

    for source in SOURCES:
        assert page.count(f'href="?source={source}"') == 1
    assert {topic.source for topic in filtered} == {"tubelab"}
    assert len(filtered) == 5


def test_the_ledger_list_keeps_its_query_count_and_never_counts_the_whole_ledger(admin_client, bounded):
    add_ledger_entries(30)
    admin_client.get(LEDGER)
    few = queries_for(admin_client, LEDGER)

    add_ledger_entries(270, start=30)
    many = queries_for(admin_client, LEDGER)

    assert len(many) == len(few)
    assert whole_table_counts(many, "batches_costledgerentry") == []
    assert not any("DISTINCT" in q and "batches_costledgerentry" in q for q in many)


def test_the_ledger_list_filters_by_provider(admin_client):
    add_ledger_entries(10)

    page = admin_client.get(LEDGER).content.decode()
    shown = admin_client.get(LEDGER + "?provider=perplexity").context["cl"].result_list

    assert 'href="?provider=perplexity"' in page and 'href="?model=sonar"' in page
    assert {entry.provider for entry in shown} == {"perplexity"}


def test_the_draft_list_offers_the_newest_batches_and_the_one_chosen(admin_client, categories):
    add_topics(categories, 30)
    batches = Batch.objects.bulk_create(Batch(budget_usd=Decimal(40), model="m") for _ in range(25))
    topics = list(Topic.objects.order_by("pk"))
    Newsletter.objects.bulk_create(Newsletter(batch=b, topic=t) for b, t in zip(batches, topics, strict=False))
    oldest = batches[0].pk

    page = admin_client.get(DRAFTS).content.decode()
    chosen = admin_client.get(DRAFTS + f"?batch__id__exact={oldest}")

    assert f'href="?batch__id__exact={batches[-1].pk}"' in page
    assert f'href="?batch__id__exact={oldest}"' not in page  # not among the 20 newest
    assert f'href="?batch__id__exact={oldest}"' in chosen.content.decode()
    assert [n.batch_id for n in chosen.context["cl"].result_list] == [oldest]


def test_the_draft_list_keeps_its_query_count_and_never_counts_the_whole_table(admin_client, categories, bounded):
    add_topics(categories, 200)
    topics = list(Topic.objects.order_by("pk"))
    batch = Batch.objects.create(budget_usd=Decimal(40), model="m")
    Newsletter.objects.bulk_create(Newsletter(batch=batch, topic=t, position=n) for n, t in enumerate(topics[:30]))
    admin_client.get(DRAFTS)
    few = queries_for(admin_client, DRAFTS)

    Newsletter.objects.bulk_create(Newsletter(batch=batch, topic=t, position=n) for n, t in enumerate(topics[30:]))
    many = queries_for(admin_client, DRAFTS)

    assert len(many) == len(few)
    assert whole_table_counts(many, "batches_newsletter") == []


def without_tokens(html: str) -> str:
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", html)


def test_the_editable_category_column_renders_as_each_rows_own_select_would(admin_client, categories, monkeypatch):
    add_topics(categories, 30)
    shared = without_tokens(admin_client.get(TOPICS).content.decode())

    monkeypatch.setattr(RenderedOncePerValue, "render", RelatedFieldWidgetWrapper.render)
    one_by_one = without_tokens(admin_client.get(TOPICS).content.decode())

    assert shared == one_by_one
    assert shared.count('<select name="form-') == 30


def test_a_category_changed_in_the_list_is_saved_and_locked(admin_client, categories):
    add_topics(categories, 3)
    topics = list(Topic.objects.order_by("-score", "-id"))
    data = {"form-TOTAL_FORMS": "3", "form-INITIAL_FORMS": "3", "form-MIN_NUM_FORMS": "0",
            "form-MAX_NUM_FORMS": "1000", "_save": "Save"}
    for n, topic in enumerate(topics):
        data[f"form-{n}-id"] = str(topic.pk)
        data[f"form-{n}-category"] = str(topic.category_id)
    data["form-1-category"] = str(categories["product_sourcing"].pk)

    response = admin_client.post(TOPICS, data)

    assert response.status_code == 302
    changed = Topic.objects.get(pk=topics[1].pk)
    assert (changed.category.slug, changed.category_locked) == ("product_sourcing", True)
    assert not Topic.objects.get(pk=topics[0].pk).category_locked


def plan(sql: str) -> str:
    """How the database reads `sql` inside index_order_reads, as each list's count and page are read."""
    with index_order_reads(connection.alias), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("EXPLAIN " + sql)
            return "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("EXPLAIN QUERY PLAN " + sql)
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


def collects_every_row(plan_text: str, table: str) -> bool:
    """Whether a plan reads all matching rows before the first one (a sort or a bitmap scan on PostgreSQL, a
    sort of the whole ORDER BY on SQLite) or the whole table without an index. The sort of rows an index already
    holds in order of their first keys (incremental, or SQLite's "right part") stops with the LIMIT."""
    lines = plan_text.splitlines()
    if connection.vendor == "postgresql":
        node = r"(^|->)\s*(Sort|Bitmap Heap Scan on \S+|Seq Scan on " + table + r")\s+\("  # "Sort  (cost=..."
        return any(re.search(node, line) for line in lines)
    return any("USE TEMP B-TREE FOR ORDER BY" in line or re.fullmatch(rf"SCAN {table}", line) for line in lines)


LIST_PAGES = [
    (TOPICS, "topics_topic", ""), (TOPICS, "topics_topic", "?status__exact=new"),
    (TOPICS, "topics_topic", "?category__id__exact=1"), (TOPICS, "topics_topic", "?source=reddit"),
    (TOPICS, "topics_topic", "?category_locked__exact=1"), (TOPICS, "topics_topic", "?p=2"),
    (TOPICS, "topics_topic", "?status__exact=approved&p=2"), (TOPICS, "topics_topic", "?status__exact=new&p=3"),
    (LEDGER, "batches_costledgerentry", "?p=3"), (DRAFTS, "batches_newsletter", "?status__exact=generated&p=3"),
    (LEDGER, "batches_costledgerentry", ""), (LEDGER, "batches_costledgerentry", "?provider=perplexity"),
    (LEDGER, "batches_costledgerentry", "?status__exact=settled"), (LEDGER, "batches_costledgerentry", "?model=sonar"),
    (LEDGER, "batches_costledgerentry", "?batch__id__exact={batch}"),
    (DRAFTS, "batches_newsletter", ""), (DRAFTS, "batches_newsletter", "?status__exact=generated"),
    (DRAFTS, "batches_newsletter", "?batch__id__exact={batch}"),
]


@pytest.mark.parametrize(("url", "table", "query"), LIST_PAGES)
def test_every_list_reads_its_count_and_page_in_order_from_an_index(admin_client, categories, monkeypatch, url, table,
                                                                     query):
    """Whatever the planner's statistics (a test database has none): each ordered read of the list's own table
    walks an index in the list's order and can stop at its LIMIT, on a table of any size."""
    for model in (Topic, CostLedgerEntry, Newsletter):
        monkeypatch.setattr(admin.site._registry[model], "list_per_page", 10)  # every filter fills two pages
    monkeypatch.setattr(EstimatedCountPaginator, "keys_first_from", 20)  # page 3 reads its keys first
    add_topics(categories, 120)
    Topic.objects.filter(pk__in=Topic.objects.order_by("pk").values("pk")[:40]).update(category_locked=True)
    add_ledger_entries(120)
    batch = Batch.objects.create(budget_usd=Decimal(40), model="m")
    CostLedgerEntry.objects.update(batch=batch)
    Newsletter.objects.bulk_create(Newsletter(batch=batch, topic=t, position=n, status="generated")
                                   for n, t in enumerate(Topic.objects.order_by("pk")[:60]))

    ordered = [sql for sql in queries_for(admin_client, url + query.format(batch=batch.pk))
               if f'FROM "{table}"' in sql and "ORDER BY" in sql and " LIMIT " in sql]

    assert len(ordered) >= 2  # the bounded count and the page
    for sql in ordered:
        shape = plan(sql)
        assert not collects_every_row(shape, table), f"{sql}\n{shape}"


def test_the_desk_index_never_counts_a_whole_table(admin_client, categories, monkeypatch):
    add_topics(categories, 30)
    monkeypatch.setattr(admin_lists_module, "bounded_count", functools.partial(admin_lists_module.bounded_count, bound=5))

    sql = queries_for(admin_client, reverse("admin:index"))
    page = admin_client.get(reverse("admin:index")).content.decode()

    assert whole_table_counts(sql, "topics_topic") == [] and whole_table_counts(sql, "batches_newsletter") == []
    topics_row = page[page.index('id="desk-waiting-topics"'):]
    assert "<strong>more than 5</strong> new" in topics_row[:topics_row.index("</tr>")]


def test_the_ledger_totals_what_it_counted_and_points_to_the_dashboard_past_that(admin_client, bounded):
    add_ledger_entries(4)
    short = queries_for(admin_client, LEDGER)
    assert "Total of the entries shown:</strong> $0.04" in admin_client.get(LEDGER).content.decode()

    add_ledger_entries(20, start=4)
    long = queries_for(admin_client, LEDGER)
    page = admin_client.get(LEDGER).content.decode()

    assert any("SUM(" in q for q in short) and not any("SUM(" in q for q in long)  # no sum of a whole ledger
    assert "Total of the entries shown" not in page and "Too many entries to total here" in page


def test_the_action_checkboxes_render_as_djangos_own(admin_client, categories, monkeypatch):
    add_topics(categories, 30)
    Topic.objects.filter(pk=Topic.objects.order_by("-score", "-id")[0].pk).update(title='Tariffs <b>"up"</b> & \'on\'')
    shared = without_tokens(admin_client.get(TOPICS).content.decode())

    monkeypatch.setattr(LargeListAdmin, "action_checkbox", admin.ModelAdmin.action_checkbox)
    one_by_one = without_tokens(admin_client.get(TOPICS).content.decode())

    assert shared == one_by_one
    assert shared.count('name="_selected_action"') == 30


@pytest.mark.parametrize("table", ["topics_topic", "batches_costledgerentry", "batches_newsletter"])
def test_no_index_of_a_long_list_is_the_start_of_another(table):
    """An index on a column that another index starts with serves nothing the other does not, and costs every
    write (the category key's own index on topics, the batch key's on the ledger and on drafts)."""
    with connection.cursor() as cursor:
        indexes = [info for info in connection.introspection.get_constraints(cursor, table).values()
                   if info["index"] or info["unique"]]
    single = {info["columns"][0] for info in indexes
              if len(info["columns"]) == 1 and not info["primary_key"] and not info["unique"]}
    leading = {info["columns"][0] for info in indexes if len(info["columns"]) > 1}

    assert single & leading == set()


@pytest.mark.parametrize(("url", "model", "query"), [
    (TOPICS, Topic, "?status__exact=approved"), (TOPICS, Topic, ""), (LEDGER, CostLedgerEntry, "?provider=anthropic"),
])
def test_a_deep_page_reads_keys_first_and_shows_the_rows_django_would(admin_client, categories, monkeypatch, url, model,
                                                                       query):
    monkeypatch.setattr(EstimatedCountPaginator, "keys_first_from", 20)
    monkeypatch.setattr(admin.site._registry[model], "list_per_page", 10)
    add_topics(categories, 60)
    add_ledger_entries(60)
    changelist = admin_client.get(url + query).context["cl"]
    everything = list(changelist.queryset.values_list("pk", flat=True))

    response = admin_client.get(url + (query + "&" if query else "?") + "p=3")
    sql = queries_for(admin_client, url + (query + "&" if query else "?") + "p=3")

    assert [row.pk for row in response.context["cl"].result_list] == everything[20:30]
    assert any(' OFFSET 20' in q and 'AS "pk" FROM' in q for q in sql)  # the keys, from the order's index
    [rows] = [q for q in sql if f'FROM "{model._meta.db_table}"' in q and '"id" IN (' in q and " OFFSET " not in q]
    assert " WHERE " + f'"{model._meta.db_table}"."id" IN (' in rows and " AND " not in rows  # by key alone
    assert bool(response.context["cl"].queryset.query.where) == bool(query)  # the list keeps its own filters
    if model is Topic:
        assert response.content.decode().count('<select name="form-') == 10  # the editable column still works
