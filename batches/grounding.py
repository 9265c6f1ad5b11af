"""Does a draft stand on its sources? Its material is gathered first, and checks run on every answer and leave flags
for the editor.

- every link is one of the sources' URLs (compared canonically: scheme, `www.`, tracking parameters aside);
- every `[n]` citation, and every number the answer lists in `sources_used`, is a source that exists;
- every figure (an amount, a percentage, a count, a multiplier) appears in the material: the topic's own title
  and summary or a readable source, compared after normalising `$1,200` / `1200` / `1.2k` to one number. Dates,
  years, list numbering, ordinals and bare whole numbers below ten ("pick 3 SKUs") are not figures;
- material with nothing readable beyond the headline is itself a flag.

`check_draft` only reads; `store_check` writes the draft's numbered sources and its flags.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation

from django.conf import settings

from topics.dedupe import canonical_url
from topics.material import Material, empty_material, gather_material, stored_material

from .metering import BatchMeter
from .models import DraftFlag, Newsletter
from .prompts import PromptSource, number_sources

logger = logging.getLogger("newsroom.grounding")
Kind = DraftFlag.Kind
SMALL_COUNT = 10

_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?|"
           r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
# Dates and times are not figures: taken out of the text before figures are looked for.
_DATES = re.compile(
    rf"\b\d{{4}}-\d{{2}}-\d{{2}}\b"                                   # 2026-11-18
    rf"|\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?\b"  # January 19, 2027
    rf"|\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTHS}\b"           # 19 January
    r"|\b\d{1,2}:\d{2}\b"                                              # 06:00
    r"|\b\d{1,2}/\d{1,2}(?:/\d{2,4})?\b",                              # 11/18/2026
    re.I,
)
_URL = re.compile(r"https?://[^\s<>()\[\]]+", re.I)
_MD_LINK = re.compile(r"\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>", re.I)
_HREF = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.I)
_CITATION = re.compile(r"\[(\d{1,3}(?:\s*[,–-]\s*\d{1,3})*)\](?!\()")
_LIST_NUMBER = re.compile(r"^(\s*)\d{1,3}[.)](?=\s)", re.M)
_FIGURE = re.compile(
    r"(?<![\w.,/])(?P<currency>[$€£])?\s?"
    r"(?P<number>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?:\s?(?P<magnitude>k|thousand|million|billion|trillion|mn|bn|m|b)\b)?"
    r"(?:\s?(?P<percent>%|percent\b|per cent\b|pct\b))?"
    r"(?:\s?(?P<multiplier>x\b|×|times\b))?"
    r"(?![\w/]|\.\d)",
    re.I,
)
_MAGNITUDES = {"k": 1_000, "thousand": 1_000, "m": 1_000_000, "mn": 1_000_000, "million": 1_000_000,
               "b": 1_000_000_000, "bn": 1_000_000_000, "billion": 1_000_000_000, "trillion": 10**12}
_ITEM_MARKER = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*+])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"“(\[*]?[A-Z0-9$€£])")


def gather_for_newsletter(*, newsletter: Newsletter) -> Material:
    """The first step of drafting one newsletter: its topic's material, fresh documents reused.

    Research, when on, is charged to the newsletter's batch. Never raises: whatever goes wrong, the draft goes
    ahead with the material that could be had.
    """
    topic = newsletter.topic
    try:
        return gather_material(
            topic=topic, meter=BatchMeter(batch_id=newsletter.batch_id, newsletter_id=newsletter.pk),
            research_key=f"research:newsletter:{newsletter.pk}:attempt:{newsletter.attempts}",
        )
    except Exception:
        logger.exception("gathering material for topic %s failed; drafting with what is stored", topic.pk)
        try:
            return stored_material(topics=[topic])[topic.pk]
        except Exception:
            logger.exception("reading the stored material of topic %s failed too", topic.pk)
            return empty_material(topic)


@dataclass(frozen=True)
class FlagData:
    kind: str
    text: str
    sentence: str = ""


@dataclass(frozen=True)
class Figure:
    text: str
    value: Decimal


# --- figures ------------------------------------------------------------------------------------------------------

def _value(match: re.Match, *, scaled: bool = True) -> Decimal | None:
    try:
        value = Decimal(match.group("number").replace(",", ""))
    except InvalidOperation:
        return None
    magnitude = (match.group("magnitude") or "").lower()
    # "5m" or "4b" alone is as likely minutes or a grade as millions: only with a currency sign is it money.
    if scaled and magnitude and (match.group("currency") or magnitude not in ("m", "b")):
        value *= _MAGNITUDES[magnitude]
    return value


def _prose(text: str) -> str:
    """The text with what holds numbers but no figures taken out: links, citations, dates, list numbering."""
    text = _MD_LINK.sub(lambda m: m.group(1), text)
    text = _URL.sub(" ", _AUTOLINK.sub(" ", text))
    text = _CITATION.sub(" ", text)
    text = _LIST_NUMBER.sub(r"\1", text)
    return _DATES.sub(" ", text)


def figures_in(text: str) -> list[Figure]:
    """The figures a draft states: amounts, percentages, multipliers and counts of ten or more."""
    found = []
    for match in _FIGURE.finditer(_prose(text)):
        value = _value(match)
        if value is None:
            continue
        scaled = value != _value(match, scaled=False)
        has_unit = scaled or any(match.group(g) for g in ("currency", "percent", "multiplier"))
        number = match.group("number")
        if not has_unit and (value < SMALL_COUNT or (len(number) == 4 and 1900 <= value <= 2100)):
            continue  # a small count ("3 steps") or a year
        found.append(Figure(text=match.group(0).strip(), value=value))
    return found


def values_in(texts: Iterable[str]) -> set[Decimal]:
    """Every number the material states, as written and scaled by its magnitude (1.2k → 1.2 and 1200)."""
    values: set[Decimal] = set()
    for text in texts:
        for match in _FIGURE.finditer(text or ""):
            for scaled in (True, False):
                value = _value(match, scaled=scaled)
                if value is not None:
                    values.add(value)
    return values


# --- links and citations ----------------------------------------------------------------------------------------

def links_in(text: str) -> list[str]:
    """Every http(s) link in Markdown text: inline links, autolinks, bare URLs and HTML hrefs, once each."""
    links = [m.group(2) for m in _MD_LINK.finditer(text)]
    links += [m.group(1) for m in _AUTOLINK.finditer(text)] + [m.group(1) for m in _HREF.finditer(text)]
    links += _URL.findall(_MD_LINK.sub(" ", _AUTOLINK.sub(" ", text)))
    return [link.rstrip(".,;:!?'\"") for link in dict.fromkeys(links)]


def citations_in(text: str) -> list[tuple[str, list[int]]]:
    """The `[n]` markers of a text, each with the source numbers it names ("[1-3]" names 1, 2 and 3)."""
    markers = []
    for match in _CITATION.finditer(text):
        numbers: list[int] = []
        for part in re.split(r"\s*,\s*", match.group(1)):
            bounds = [int(x) for x in re.split(r"\s*[–-]\s*", part) if x]
            if len(bounds) == 2 and 0 < bounds[1] - bounds[0] < 20:
                numbers += list(range(bounds[0], bounds[1] + 1))
            else:
                numbers += bounds
        markers.append((match.group(0), numbers))
    return markers


def cited_numbers(text: str) -> list[int]:
    return sorted({n for _, numbers in citations_in(text) for n in numbers})


# --- sentences ----------------------------------------------------------------------------------------------------

def plain(sentence: str) -> str:
    """A sentence as a reader sees it: Markdown links reduced to their text, emphasis and list markers gone."""
    text = _MD_LINK.sub(lambda m: m.group(1), sentence)
    text = re.sub(r"(\*\*|__|\*|_|`)", "", text)
    text = re.sub(r"^\s*(?:#{1,6}\s+|[-+]\s+|\d{1,3}[.)]\s+|>\s*)", "", text)
    return " ".join(text.split())


def sentences(text: str) -> list[str]:
    """The draft's sentences, each inside one paragraph, list item or heading."""
    out = []
    for line in text.replace("\r\n", "\n").split("\n"):
        line = _ITEM_MARKER.sub("", line).strip()  # "1. Compare..." is one sentence, not "1." and "Compare..."
        if line:
            out += [s for s in _SENTENCE_END.split(line) if s.strip()]
    return out


# --- the check ----------------------------------------------------------------------------------------------------

def _draft_text(draft) -> str:
    return "\n".join([draft.subject, draft.preview_text, draft.body_markdown])


def check_draft(*, newsletter: Newsletter, draft, material: Material) -> list[FlagData]:
    """The flags for one draft (subject, preview text and body) against its material. Reads nothing else."""
    sources = numbered(material)
    numbers = {s.n for s in sources}
    allowed_links = {canonical_url(u) for u in material.urls if u}
    known_values = values_in([material.topic.title, material.topic.summary, *(d.text for d in material.readable)])
    flags: dict[tuple[str, str], FlagData] = {}

    def flag(kind: str, text: str, sentence: str = "") -> None:
        flags.setdefault((kind, text), FlagData(kind=kind, text=text[:500], sentence=plain(sentence)))

    for sentence in sentences(_draft_text(draft)):
        for link in links_in(sentence):
            if link.lower().startswith(("http://", "https://")) and canonical_url(link) not in allowed_links:
                flag(Kind.LINK, link, sentence)
        for marker, cited in citations_in(sentence):
            if any(n not in numbers for n in cited):
                flag(Kind.CITATION, marker, sentence)
        for figure in figures_in(sentence):
            if figure.value not in known_values:
                flag(Kind.FIGURE, figure.text, sentence)
    for n in getattr(draft, "sources_used", ()) or ():
        if n not in numbers:
            flag(Kind.CITATION, f"sources_used lists [{n}]")
    if material.is_thin:
        unread = len(material.failed)
        flag(Kind.THIN, "No source had readable text beyond the headline"
             + (f" ({unread} could not be read)" if unread else ""))
    return list(flags.values())


def numbered(material: Material) -> list[PromptSource]:
    """The material's sources as the draft's prompt numbered them (the same function builds the prompt)."""
    return number_sources(documents=material.readable, max_tokens=settings.MATERIAL_MAX_TOKENS)


def sources_snapshot(*, sources: Sequence[PromptSource], cited: Iterable[int]) -> list[dict]:
    chosen = set(cited)
    return [{"n": s.n, "title": s.title, "url": s.url, "kind": s.kind, "cited": s.n in chosen} for s in sources]


def checked(*, newsletter: Newsletter, draft, material: Material) -> dict:
    """The draft's numbered sources (cited ones marked) and its flags, as JSON-ready data: an answer's record
    carries it from the call to the write (and through the spool, if the database is away meanwhile)."""
    flags = check_draft(newsletter=newsletter, draft=draft, material=material)
    cited = set(cited_numbers(_draft_text(draft))) | set(getattr(draft, "sources_used", ()) or ())
    return {"sources": sources_snapshot(sources=numbered(material), cited=cited), "flags": [asdict(f) for f in flags]}


def write_checked(*, newsletter: Newsletter, checked: dict | None, save: bool = True) -> list[DraftFlag]:
    """Store a draft's sources and flags with it, replacing an earlier draft's. Nothing for an answer recorded
    without them. With `save` False the sources are only set on `newsletter`, for the caller's own save."""
    if checked is None:
        return []
    newsletter.sources = checked["sources"]
    if save:
        Newsletter.objects.filter(pk=newsletter.pk).update(sources=newsletter.sources)
    DraftFlag.objects.filter(newsletter=newsletter).delete()
    return DraftFlag.objects.bulk_create(
        DraftFlag(newsletter=newsletter, kind=f["kind"], text=f["text"], sentence=f["sentence"])
        for f in checked["flags"]
    )


def store_check(*, newsletter: Newsletter, draft, material: Material) -> list[DraftFlag]:
    """Check the draft and store its sources and flags with it."""
    return write_checked(newsletter=newsletter,
                         checked=checked(newsletter=newsletter, draft=draft, material=material))


def cited_sources(newsletter: Newsletter) -> list[dict]:
    """The sources the draft cites as it reads now (an editor may have cut a paragraph and its [n]), by number."""
    in_text = set(cited_numbers(_draft_text(newsletter)))
    return [
        {"n": s["n"], "url": s.get("url", ""), "title": s.get("title", "")}
        for s in newsletter.sources or []
        if (s["n"] in in_text if in_text else s.get("cited"))
    ]
