from __future__ import annotations

import io
import itertools
import json
import os
import re
import socket
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from batches.models import Batch, CostLedgerEntry, Newsletter
from topics.dedupe import is_near_duplicate
from topics.models import Topic

pytestmark = pytest.mark.django_db

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "topics" / "sample_data" / "sample_topics.json"
MONEY = re.compile(r"^\d+\.\d{6}$")
ITEM_LINE = re.compile(
    r"^\s*\d+\. \[(?P<category>\w+)\] (?P<title>.+) \(score (?P<score>[\d.]+), up to \$(?P<cost>[\d.]+)\)$"
)

# Titles that share no story, one pair per category.
TITLES = {
    "shipping_logistics": ["USPS raises parcel rates for 2027", "A 3PL cost breakdown at 1,200 orders a month"],
    "pricing_margins": ["New tariff on Chinese goods starts Dec 1", "Raising prices 12% lifted profit"],
    "conversion_optimization": ["Fourteen product page layouts tested", "Checkout trust badges split test"],
    "ads_marketing": ["Meta ads CPM spikes before Black Friday", "Influencer campaign with 212 nano creators"],
    "inventory_management": ["Stockout on our best SKU cost $48k", "Dead stock liquidation options compared"],
    "customer_retention": ["Post-purchase email flows that drive revenue", "Loyalty program: points vs tiers"],
    "product_sourcing": ["Vetting an Alibaba supplier before a deposit", "Negotiating MOQ down to 300 units"],
    "platform_tools": ["Shopify Winter '27 Edition highlights", "WooCommerce 10.0 released for store owners"],
}


@pytest.fixture(autouse=True)
def dry_run_settings(settings):
    settings.ANTHROPIC_MODEL = "claude-sonnet-4-6"
    settings.BATCH_BUDGET_USD = "40"
    settings.BATCH_SIZE = 8
    settings.MONTHLY_BUDGET_USD = ""
    return settings


@pytest.fixture
def pool(make_topic):
    """Two approved topics in each of the eight categories."""
    scores = itertools.count(10)
    return [
        make_topic(title, category=slug, score=next(scores))
        for slug, titles in TITLES.items()
        for title in titles
    ]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the call and is recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access during a dry run")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def dry_run(*args: str) -> str:
    out = io.StringIO()
    call_command("runbatch", "--dry-run", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def dry_run_json(*args: str) -> dict:
    return json.loads(dry_run("--json", *args))


def failed_dry_run(*args: str) -> CommandError:
    with pytest.raises(CommandError) as excinfo:
        dry_run(*args)
    return excinfo.value


# --- what it shows ---------------------------------------------------------------------------------


def test_it_prints_eight_topics_from_eight_categories(pool):
    items = [m for m in map(ITEM_LINE.match, dry_run().splitlines()) if m]

    assert len(items) == 8
    assert {m["category"] for m in items} == set(TITLES)


def test_it_prints_each_topics_category_and_score(pool):
    items = [m for m in map(ITEM_LINE.match, dry_run().splitlines()) if m]

    topics = {t.title: t for t in pool}
    assert all(
        (m["category"], float(m["score"])) == (topics[m["title"]].category.slug, topics[m["title"]].score)
        for m in items
    )


def test_it_prints_an_estimated_cost_that_adds_up(pool):
    output = dry_run()

    item_costs = [Decimal(m["cost"]) for m in map(ITEM_LINE.match, output.splitlines()) if m]
    total = Decimal(re.search(r"Estimated cost: \$([\d.]+)", output)[1])
    assert total > 0
    # Each figure is shown rounded to $0.0001, so the shown items can differ from the shown total by at most half
    # of that per item.
    assert abs(total - sum(item_costs)) <= Decimal("0.00005") * len(item_costs)


def test_it_prices_the_estimate_with_the_configured_model(pool, settings):
    sonnet = Decimal(dry_run_json()["estimated_cost_usd"])
    settings.ANTHROPIC_MODEL = "claude-haiku-4-5"

    haiku = Decimal(dry_run_json()["estimated_cost_usd"])

    assert 0 < haiku < sonnet


def test_it_selects_as_many_topics_as_size_asks(pool):
    assert len(dry_run_json("--size", "3")["items"]) == 3


def test_it_includes_unreviewed_topics_when_asked(make_topic):
    new = make_topic("USPS raises parcel rates", status=Topic.Status.NEW)

    assert [item["topic"] for item in dry_run_json("--include-new")["items"]] == [new.pk]


# --- both deliveries ---------------------------------------------------------------------------------


DELIVERY_LINE = re.compile(r"^Delivery: (?P<chosen>now|economy) \(.*\), up to \$(?P<cost>[\d.]+); "
                           r"(?P<other>now|economy) \(.*\) would be up to \$(?P<other_cost>[\d.]+)\.$")


def delivery_line(output: str) -> re.Match:
    [line] = [m for m in map(DELIVERY_LINE.match, output.splitlines()) if m]
    return line


def test_an_economy_dry_run_shows_the_economy_estimate_beside_the_now_one(pool):
    output = dry_run("--economy")

    line = delivery_line(output)
    assert (line["chosen"], line["other"]) == ("economy", "now")
    economy, now = Decimal(line["cost"]), Decimal(line["other_cost"])
    assert 0 < economy <= now * Decimal("0.55")
    # The estimate and the items are the economy ones: they add up to the economy figure.
    assert Decimal(re.search(r"Estimated cost: \$([\d.]+) \(upper bound, economy\)", output)[1]) == economy
    item_costs = [Decimal(m["cost"]) for m in map(ITEM_LINE.match, output.splitlines()) if m]
    assert abs(economy - sum(item_costs)) <= Decimal("0.00005") * len(item_costs)


def test_a_now_dry_run_shows_what_economy_would_cost_too(pool):
    line = delivery_line(dry_run())

    assert (line["chosen"], line["other"]) == ("now", "economy")
    assert Decimal(line["other_cost"]) < Decimal(line["cost"])


def test_an_economy_dry_run_reports_both_estimates_in_json_and_the_batch_price_one_as_the_estimate(pool, settings):
    from batches.planning import estimate_topics

    now, economy = dry_run_json(), dry_run_json("--economy")

    assert (now["delivery"], economy["delivery"]) == ("now", "economy")
    assert now["estimates_usd"] == economy["estimates_usd"]
    assert economy["estimated_cost_usd"] == economy["estimates_usd"]["economy"]
    assert now["estimated_cost_usd"] == now["estimates_usd"]["now"]
    topics = [Topic.objects.get(pk=item["topic"]) for item in economy["items"]]
    expected = estimate_topics(topics=topics, model=settings.ANTHROPIC_MODEL, max_tokens=settings.ANTHROPIC_MAX_TOKENS,
                               batch_api=True)
    assert economy["estimated_cost_usd"] == str(expected.estimated_cost_usd)
    assert [item["cost_usd"] for item in economy["items"]] == [str(i.estimated_cost_usd) for i in expected.items]
    assert [item["topic"] for item in economy["items"]] == [item["topic"] for item in now["items"]]


def test_batch_delivery_economy_makes_the_dry_run_an_economy_one_unless_now_is_asked(pool, settings):
    settings.BATCH_DELIVERY = "economy"

    assert dry_run_json()["delivery"] == "economy"
    assert dry_run_json("--now")["delivery"] == "now"


def test_an_economy_dry_run_calls_nothing_and_creates_nothing(pool, fake_anthropic, no_network):
    dry_run("--economy")
    dry_run_json("--economy")

    assert no_network == [] and fake_anthropic.requests == []
    assert (Batch.objects.count(), Newsletter.objects.count(), CostLedgerEntry.objects.count()) == (0, 0, 0)


# --- what it does not do ---------------------------------------------------------------------------


def test_it_creates_no_batch_newsletter_or_ledger_entry(pool):
    dry_run()
    dry_run_json()

    assert (Batch.objects.count(), Newsletter.objects.count(), CostLedgerEntry.objects.count()) == (0, 0, 0)


def test_it_sends_nothing_to_the_anthropic_api(pool, fake_anthropic):
    dry_run()
    dry_run_json()

    assert fake_anthropic.requests == []


def test_it_opens_no_network_connection(pool, fake_anthropic, no_network):
    dry_run()
    dry_run_json()

    assert no_network == []
    assert fake_anthropic.requests == []


def test_it_runs_without_an_anthropic_key(pool, settings):
    settings.ANTHROPIC_API_KEY = ""

    assert len(dry_run_json()["items"]) == 8


# --- JSON ------------------------------------------------------------------------------------------


def test_it_prints_exactly_one_json_object(pool):
    output = dry_run("--json")

    assert len(output.strip().splitlines()) == 1
    assert isinstance(json.loads(output), dict)


def test_it_reports_the_contracts_keys_in_json(pool):
    report = dry_run_json()

    assert set(report) == {"batch", "dry_run", "status", "budget_usd", "spent_usd", "estimated_cost_usd", "items",
                           "left_out", "delivery", "estimates_usd"}
    assert all(
        set(item) == {"topic", "title", "category", "score", "status", "cost_usd", "subject", "sources", "flags"}
        for item in report["items"]
    )


def test_it_reports_no_batch_and_a_dry_run_in_json(pool):
    report = dry_run_json()

    assert (report["batch"], report["dry_run"], report["spent_usd"]) == (None, True, "0.000000")


def test_it_writes_money_as_strings_with_six_decimals(pool):
    report = dry_run_json()

    money = [report["budget_usd"], report["spent_usd"], report["estimated_cost_usd"]]
    money += [item["cost_usd"] for item in report["items"]]
    assert all(isinstance(m, str) and MONEY.match(m) for m in money), money


def test_it_reports_the_budget_it_was_given(pool):
    assert dry_run_json("--budget", "12.5")["budget_usd"] == "12.500000"


def test_it_reports_the_default_budget_from_settings(pool, settings):
    settings.BATCH_BUDGET_USD = "25"

    assert dry_run_json()["budget_usd"] == "25.000000"


def test_it_describes_each_selected_topic_in_json(pool):
    report = dry_run_json()

    topics = {t.pk: t for t in Topic.objects.select_related("category")}
    assert all(
        (item["title"], item["category"], item["score"], item["subject"])
        == (topics[item["topic"]].title, topics[item["topic"]].category.slug, topics[item["topic"]].score, None)
        for item in report["items"]
    )
    assert all(isinstance(item["score"], float) for item in report["items"])


def test_it_sums_the_item_estimates_into_the_total(pool):
    report = dry_run_json()

    assert Decimal(report["estimated_cost_usd"]) == sum(Decimal(i["cost_usd"]) for i in report["items"])


def left_out_pool(make_topic) -> None:
    """One fresh topic, one a draft has used, and one retelling that drafted story from another source."""
    from topics import usage

    make_topic("Checkout trust badges split test", category="conversion_optimization", score=20)
    drafted = make_topic("USPS raises parcel rates for 2027", category="shipping_logistics", score=30)
    usage.mark_taken(topic_ids=[drafted.pk])
    usage.mark_drafted(topic_id=drafted.pk)
    make_topic("USPS parcel rates rise in 2027 - how are you adjusting?", category="pricing_margins", score=90)


def test_it_says_how_many_candidates_it_left_out_and_why(make_topic):
    left_out_pool(make_topic)

    assert "Candidates: 2 left out: 1 already drafted, 1 repeat of a recent story" in dry_run().splitlines()


def test_it_counts_the_candidates_it_left_out_in_json(make_topic):
    left_out_pool(make_topic)

    assert dry_run_json()["left_out"] == {"already_drafted": 1, "recent_repeat": 1, "near_duplicate": 0,
                                          "not_approved": 0}


# --- the bundled sample ----------------------------------------------------------------------------


def test_it_picks_eight_categories_and_no_repeated_story_from_the_sample_data(categories):
    call_command("import_topics", str(SAMPLE), stdout=io.StringIO(), stderr=io.StringIO())

    items = dry_run_json()["items"]

    assert len({item["category"] for item in items}) == 8
    assert not [(a["title"], b["title"]) for a, b in itertools.combinations(items, 2)
                if is_near_duplicate(a["title"], b["title"])]


# --- refusals --------------------------------------------------------------------------------------


def test_it_exits_1_when_there_is_nothing_to_select(categories):
    error = failed_dry_run()

    assert error.returncode == 1
    assert "Nothing to select" in str(error)


def test_it_exits_1_when_only_unreviewed_topics_are_left(make_topic):
    make_topic("USPS raises parcel rates", status=Topic.Status.NEW)

    assert failed_dry_run().returncode == 1


def test_it_exits_1_when_the_configured_model_has_no_price(pool, settings):
    settings.ANTHROPIC_MODEL = "claude-unknown-1"

    error = failed_dry_run()

    assert error.returncode == 1
    assert "claude-unknown-1" in str(error)


BAD_OPTIONS = [
    ("--size", "0"),
    ("--size", "101"),
    ("--size", "-1"),
    ("--size", "abc"),
    ("--budget", "0"),
    ("--budget", "-1"),
    ("--budget", "abc"),
    ("--budget", "NaN"),
    ("--budget", "Infinity"),
    ("--budget", "0.0000001"),  # rounds to $0 at the ledger's six decimal places
    ("--budget", "1e15"),  # more than the budget column holds
]


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_it_exits_1_naming_a_bad_option(pool, option, value):
    error = failed_dry_run(option, value)

    assert error.returncode == 1
    assert option in str(error)


@pytest.mark.parametrize(
    ("option", "value"), [("--size", "0"), ("--budget", "-1"), ("--size", "abc"), ("--no-such-option", "x")]
)
def test_it_exits_1_on_a_bad_option_from_the_command_line(tmp_path, option, value):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.sqlite3'}"}

    result = subprocess.run(
        [sys.executable, "manage.py", "runbatch", "--dry-run", option, value],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 1
    assert option in result.stderr
