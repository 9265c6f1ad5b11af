"""Checks on every draft against its sources (batches/grounding.py), each with and without a flag, and the whole
path: material gathered, carried in the prompt, cited, checked, and the flags stored with the draft."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from batches.generation import Draft, reservation_tokens
from batches.grounding import check_draft, cited_sources, figures_in
from batches.models import CostLedgerEntry, DraftFlag, Newsletter
from batches.claude_standin import Plant, request_input_tokens
from batches.pricing import price_for, worst_case_cost
from topics.material import Material
from topics.models import SourceDocument, Topic

pytestmark = pytest.mark.django_db

SOURCE_URL = "https://www.parcelwire.example/news/usps-2027"
SOURCE_TEXT = (
    "Ground Advantage prices rise an average of 7.8% on January 19, 2027. A 1 lb label to zone 8 moves from $11.20 "
    "to $12.35, and a seller shipping 1,200 parcels a month would pay about $1.4k more. Regional carriers now move "
    "3x the volume they did, and the market is worth $2.5 million a day. Priority Mail goes up 5.9 percent."
)


# Words without a figure, so a short sentence under test makes a source long enough not to be thin material.
FILLER = " Sellers are comparing notes in forums and trade groups about what changes and what it costs them." * 3


def material(*texts: str, url: str = SOURCE_URL, failed: int = 0, title: str = "USPS rates rise",
             summary: str = "Sellers discuss the 2027 increase.", pad: bool = True) -> Material:
    topic = Topic(title=title, summary=summary, url="https://forum.example/t/usps")
    docs = [SourceDocument(kind="article", url=url if i == 0 else f"{url}/{i}", title=f"Source {i + 1}",
                           text=text + (FILLER if pad else ""), status="ok") for i, text in enumerate(texts)]
    docs += [SourceDocument(kind="article", url=f"https://down.example/{i}", status="failed", reason="HTTP 404")
             for i in range(failed)]
    return Material(topic=topic, documents=tuple(docs))


def flags_for(body: str, source: Material | None = None, *, subject: str = "USPS rates", sources_used=()) -> list:
    draft = Draft(subject=subject, preview_text="What changes in January.", body_markdown=body,
                  sources_used=tuple(sources_used))
    return check_draft(newsletter=Newsletter(), draft=draft, material=source or material(SOURCE_TEXT))


def kinds(flags) -> list[tuple[str, str]]:
    return [(f.kind, f.text) for f in flags]


# --- links -------------------------------------------------------------------------------------------------------

def test_a_link_to_a_source_raises_no_flag_whatever_its_tracking_parameters():
    body = ("Read [the filing](https://parcelwire.example/news/usps-2027/?utm_source=newsletter&fbclid=1) [1]. "
            "Sellers compare notes [on the forum](https://forum.example/t/usps).")

    assert flags_for(body) == []


def test_a_link_to_anywhere_else_is_a_flag_with_its_sentence():
    body = "Ground Advantage rises 7.8% [1]. The full breakdown is in [this guide](https://guides.example/usps)."

    assert [(f.kind, f.text, f.sentence) for f in flags_for(body)] == [
        ("link", "https://guides.example/usps", "The full breakdown is in this guide.")]


def test_bare_urls_and_autolinks_are_checked_too_and_email_links_are_not():
    body = ("See https://other.example/a and <https://other.example/b> for more. "
            "Reply to [the editor](mailto:editor@example.com).")

    assert kinds(flags_for(body)) == [("link", "https://other.example/b"), ("link", "https://other.example/a")]


# --- citations ---------------------------------------------------------------------------------------------------

def test_citations_of_sources_that_exist_raise_no_flag():
    two = material(SOURCE_TEXT, "Second source with nothing numeric in it at all, just words.")

    assert flags_for("Rates rise 7.8% [1][2]. Zones differ [1, 2]. Both agree [1-2].", two) == []


def test_a_citation_of_a_source_that_does_not_exist_is_a_flag():
    flags = flags_for("Rates rise 7.8% [1]. Carriers will follow [4]. Everyone agrees [1-3].")

    assert [(f.kind, f.text) for f in flags] == [("citation", "[4]"), ("citation", "[1-3]")]
    assert flags[0].sentence == "Carriers will follow [4]."


def test_sources_used_listing_a_source_that_does_not_exist_is_a_flag():
    assert kinds(flags_for("Rates rise 7.8% [1].", sources_used=[1, 7])) == [("citation", "sources_used lists [7]")]


def test_a_markdown_link_whose_text_is_a_number_is_not_a_citation():
    assert flags_for("Rates rise 7.8% [1]. Filing at [2](https://parcelwire.example/news/usps-2027).") == []


# --- figures -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("written", ["$1,200", "1200", "1.2k", "1,200", "$1.2K", "1.2 thousand"])
def test_a_figure_the_source_gives_raises_no_flag_however_it_is_written(written):
    assert flags_for(f"About {written} parcels a month [1].") == []


@pytest.mark.parametrize("source_says, draft_says", [
    ("about $1.4k more", "$1,400 more"), ("7.8%", "7.8 percent"), ("5.9 percent", "5.9%"),
    ("$2.5 million", "$2.5M"), ("3x the volume", "3x"), ("$11.20", "$11.2"),
])
def test_figures_are_compared_after_normalising(source_says, draft_says):
    assert flags_for(f"It is {draft_says} [1].", material(f"Sellers pay {source_says} this year.")) == []


def test_a_figure_no_source_gives_is_a_flag_with_its_sentence():
    flags = flags_for("Rates rise 7.8% [1]. One seller says 37.5% of orders were late. Fees hit $49.99 [1].")

    assert [(f.kind, f.text, f.sentence) for f in flags] == [
        ("figure", "37.5%", "One seller says 37.5% of orders were late."),
        ("figure", "$49.99", "Fees hit $49.99 [1]."),
    ]


def test_a_figure_from_the_topic_itself_raises_no_flag():
    source = material("Words only, no numbers here, just a long enough paragraph about carriers and rates.",
                      title="USPS raises rates 6.5%", summary="Up to $3,400 a year for small shippers.")

    assert flags_for("Rates rise 6.5% and cost up to $3.4k a year [1].", source) == []


def test_dates_years_ordinals_list_numbers_and_small_counts_are_not_figures():
    body = """## 3 things to do before January 19, 2027

From 2026-11-18 at 06:00, on 11/18 and on the 19th, the 2027 prices apply [1].

1. Pick 3 SKUs and check them.
2. Compare zones 5-8 in your 3PL's Q4 report, open 24/7.
"""
    assert figures_in(body) == []
    assert flags_for(body) == []


def test_counts_of_ten_or_more_and_any_number_with_a_unit_are_figures():
    texts = [f.text for f in figures_in("We shipped 40 orders, paid $3, saw 4% more and 2x the returns.")]

    assert texts == ["40", "$3", "4%", "2x"]


def test_the_same_unsupported_figure_twice_is_one_flag():
    assert kinds(flags_for("Up 37.5% [1]. Really, 37.5%.")) == [("figure", "37.5%")]


def test_the_subject_and_preview_are_checked_too():
    assert kinds(flags_for("Rates rise 7.8% [1].", subject="USPS up 9.9% in January")) == [("figure", "9.9%")]


# --- thin material -----------------------------------------------------------------------------------------------

def test_material_with_nothing_readable_beyond_the_headline_is_a_flag():
    flags = flags_for("A modest issue with no figure.", material(failed=2))

    assert kinds(flags) == [("thin", "No source had readable text beyond the headline (2 could not be read)")]


def test_a_short_video_description_alone_is_thin_material():
    assert kinds(flags_for("A modest issue.", material("A short description of a video.", pad=False))) == [
        ("thin", "No source had readable text beyond the headline")]


def test_one_readable_source_is_enough_material():
    assert flags_for("Rates rise 7.8% [1].", material(SOURCE_TEXT, failed=3)) == []


# --- the whole path: gather, prompt, cite, check, store ------------------------------------------------------------

USPS = "/news/usps-ground-advantage-2027"
TARIFFS = "/news/tariffs-homeware"


@pytest.fixture
def pages_topics(web_pages, make_topic):
    return [
        make_topic("USPS Ground Advantage rises 7.8% in January", category="shipping_logistics", score=90,
                   url=web_pages.url(USPS), summary="Ground Advantage rises in January."),
        make_topic("New tariffs add 35% to imported homeware", category="pricing_margins", score=80,
                   url=web_pages.url(TARIFFS), summary="Importers plan to raise prices."),
    ]


def item(topic) -> Newsletter:
    return Newsletter.objects.get(topic=topic)


def test_a_draft_cites_the_sources_it_was_given_and_carries_no_flag(fake_anthropic, pages_topics, runbatch):
    result = runbatch("--size", "2")

    assert result.returncode == 0
    usps = item(pages_topics[0])
    assert usps.status == Newsletter.Status.GENERATED and "[1]" in usps.body_markdown
    assert usps.sources == [{"n": 1, "title": "USPS Ground Advantage rises 7.8% in January",
                             "url": usps.topic.url, "kind": "article", "cited": True}]
    assert not DraftFlag.objects.exists()
    report = {i["topic"]: i for i in result.report["items"]}[usps.topic_id]
    assert report["sources"] == [{"n": 1, "url": usps.topic.url, "title": "USPS Ground Advantage rises 7.8% in January"}]
    assert report["flags"] == []


def test_the_prompt_carries_the_material_as_numbered_fenced_sources_and_the_reservation_covers_it(
    fake_anthropic, pages_topics, runbatch
):
    runbatch("--size", "1")

    message = next(r for r in fake_anthropic.requests if r["path"] == "/v1/messages")["json"]
    user = message["messages"][0]["content"]
    fenced = json.loads(user.split("<source_material>")[1].split("</source_material>")[0])
    assert [(s["n"], s["url"]) for s in fenced] == [(1, pages_topics[0].url)]
    assert "$11.20 to $12.35" in fenced[0]["text"] and "Related stories" not in fenced[0]["text"]
    # the reservation is at least what counting the real request, material and all, would have reserved
    entry = CostLedgerEntry.objects.get()
    counted = request_input_tokens({k: v for k, v in message.items() if k != "max_tokens"})
    assert entry.reserved_usd >= worst_case_cost(input_tokens=reservation_tokens(counted),
                                                 max_tokens=message["max_tokens"], price=price_for(message["model"]))
    assert message["system"][0]["cache_control"] == {"type": "ephemeral"}  # the shared prefix stays cached
    assert "sources_used" in message["tools"][0]["input_schema"]["required"]


def test_the_shared_prefix_is_still_read_from_the_cache_with_material_in_the_prompt(
    fake_anthropic, pages_topics, runbatch
):
    fake_anthropic.min_cacheable_tokens = 512
    runbatch("--size", "2")

    entries = list(CostLedgerEntry.objects.order_by("pk"))
    assert entries[0].cache_write_tokens > 0 and entries[1].cache_read_tokens == entries[0].cache_write_tokens


def test_planted_link_figure_and_citation_become_flags_stored_with_the_draft(fake_anthropic, pages_topics, runbatch):
    fake_anthropic.plant(Plant(figure="37.5%", link="https://unsourced.example.com/guide", citation=9))

    result = runbatch("--size", "1")

    newsletter = item(pages_topics[0])
    flags = {(f.kind, f.text): f for f in newsletter.flags.all()}
    assert set(flags) == {("figure", "37.5%"), ("link", "https://unsourced.example.com/guide"), ("citation", "[9]")}
    assert flags["figure", "37.5%"].sentence == "One seller in the thread says 37.5% of their orders were affected [1]."
    assert flags["link", "https://unsourced.example.com/guide"].sentence == "The full breakdown is in this guide."
    assert all(f.is_open for f in flags.values())
    assert sorted(map(tuple, (f.values() for f in result.report["items"][0]["flags"]))) == [
        ("citation", "[9]"), ("figure", "37.5%"), ("link", "https://unsourced.example.com/guide")]


def test_a_draft_goes_ahead_when_its_source_cannot_be_read_and_says_the_material_was_thin(
    fake_anthropic, web_pages, make_topic, runbatch
):
    topic = make_topic("Carrier surcharges", category="shipping_logistics", url=web_pages.url("/status/403"))

    result = runbatch("--size", "1")

    assert result.returncode == 0
    newsletter = item(topic)
    assert newsletter.status == Newsletter.Status.GENERATED and newsletter.sources == []
    assert SourceDocument.objects.get(topic=topic).reason == "the site refused access (HTTP 403)"
    assert ("thin", "No source had readable text beyond the headline (1 could not be read)") in [
        (f["kind"], f["text"]) for f in result.report["items"][0]["flags"]]
    assert "No source material could be read" in fake_anthropic.requests[-1]["json"]["messages"][0]["content"]


def test_a_new_draft_replaces_the_flags_of_the_one_before(fake_anthropic, pages_topics, runbatch):
    from batches.generation import generate_newsletter

    fake_anthropic.plant(Plant(figure="37.5%"))
    runbatch("--size", "1")
    newsletter = item(pages_topics[0])
    assert newsletter.flags.count() == 1
    Newsletter.objects.filter(pk=newsletter.pk).update(status=Newsletter.Status.PENDING, claim_token="")

    generate_newsletter(newsletter_id=newsletter.pk, token="again")

    assert not DraftFlag.objects.filter(newsletter=newsletter).exists()


def test_the_sources_list_follows_the_citations_the_text_has_now():
    newsletter = Newsletter(body_markdown="Rates rise 7.8% [2]. Nothing else is cited.", sources=[
        {"n": 1, "title": "One", "url": "https://one.example/", "kind": "article", "cited": True},
        {"n": 2, "title": "Two", "url": "https://two.example/", "kind": "article", "cited": True},
    ])

    assert cited_sources(newsletter) == [{"n": 2, "url": "https://two.example/", "title": "Two"}]


def test_a_text_with_no_citation_left_lists_the_sources_the_answer_said_it_used():
    newsletter = Newsletter(body_markdown="Rates rise.", sources=[
        {"n": 1, "title": "One", "url": "https://one.example/", "kind": "article", "cited": True},
        {"n": 2, "title": "Two", "url": "https://two.example/", "kind": "article", "cited": False},
    ])

    assert [s["n"] for s in cited_sources(newsletter)] == [1]


def test_an_answer_spooled_during_a_database_outage_keeps_its_sources_and_flags(
    fake_anthropic, pages_topics, settings, tmp_path, monkeypatch
):
    from django.db import OperationalError

    from batches import generation, running, spool
    from batches.generation import generate_newsletter
    from batches.sweeper import sweep

    settings.ANSWER_SPOOL_DIR = tmp_path / "spool"
    settings.ANSWER_WRITE_RETRY_SECONDS = 0.2
    fake_anthropic.plant(Plant(figure="37.5%"))
    batch = running.create_batch(size=1, budget_usd=Decimal("40"), topic_ids=[pages_topics[0].pk])
    running.start_batch(batch_id=batch.pk)
    item = batch.newsletters.get()
    real_write = generation.write_answer

    def database_down(record):
        raise OperationalError("connection to server at 127.0.0.1 failed: Connection refused")

    monkeypatch.setattr(generation, "write_answer", database_down)
    generate_newsletter(newsletter_id=item.pk, token="t", sleep=lambda s: None)
    monkeypatch.setattr(generation, "write_answer", real_write)
    assert len(spool.pending()) == 1 and not DraftFlag.objects.exists()

    sweep()

    item.refresh_from_db()
    assert item.status == Newsletter.Status.GENERATED
    assert [s["n"] for s in cited_sources(item)] == [1]
    assert [(f.kind, f.text) for f in item.flags.all()] == [("figure", "37.5%")]
