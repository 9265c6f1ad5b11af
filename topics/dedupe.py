"""Near-duplicate detection: the same story told by two sources must count once."""
from __future__ import annotations

import math
import operator
import re
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import accumulate, chain, combinations, compress, count, repeat
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rapidfuzz import fuzz, process

# Titles at or above this rapidfuzz token_set_ratio (0-100, on normalised titles) are one story.
NEAR_DUPLICATE_THRESHOLD = 72

_STOPWORDS = frozenset(
    "a an the and or of to in on for with from by at is are was were be been this that these those your you "
    "how what why who when new now just it its as vs via about into over than our we my i me anyone else has "
    "have here there does do did says say saw report reports still again".split()
)
_ALIASES = {
    "jan": "january", "feb": "february", "mar": "march", "apr": "april", "jun": "june", "jul": "july",
    "aug": "august", "sep": "september", "sept": "september", "oct": "october", "nov": "november",
    "dec": "december", "bfcm": "black friday", "percent": "%",
}
_TRACKING_PARAMS = re.compile(r"^(utm_\w+|fbclid|gclid|mc_cid|mc_eid|ref|ref_src|igshid|si|share_id)$", re.I)
# Forum titles often append a question to the headline ("... - how are you handling it?"): the story is the head.
_TAIL = re.compile(r"\s+[-–—|:]\s+|\?\s*")
_TAIL_MARK = re.compile(r"[-–—|:?]")  # a title without one of these has no tail


def _stem(word: str) -> str:
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "ps")):
        return word[:-1]
    return word


# A word: letters and digits of any script, and the signs that carry a figure ("40%", "$5", "4.5", "24/7").
_WORD = re.compile(r"(?:[^\W_]|[%$.+/])+")


def _token(raw: str) -> str:
    """The normalised form of one raw word; empty for a word that carries no meaning (a stop word, dots)."""
    word = raw.strip(".")
    if not word or word in _STOPWORDS:
        return ""
    return _ALIASES.get(word) or _stem(word)


def _headline(title: str) -> str:
    """The part of a title that tells the story: a forum question tail is cut when four words or more remain."""
    head = _TAIL.split(title.strip(), maxsplit=1)[0]
    return head if len(head.split()) >= 4 else title


@lru_cache(maxsize=65536)
def normalize_title(title: str) -> str:
    """Lower-cased content words, each once, with light plural stemming, month and event aliases, forum question
    tails cut. Each word once: "Tariffs, tariffs, tariffs!" tells of tariffs, not three stories' worth of them."""
    tokens = " ".join(token for raw in _WORD.findall(_headline(title).lower()) if (token := _token(raw)))
    return _once(tokens)


def _once(norm: str) -> str:
    """A normalised title with each word kept at its first place only."""
    words = norm.split()
    return " ".join(dict.fromkeys(words)) if len(set(words)) < len(words) else norm


class _Tokens(dict):
    """Raw word (UTF-8 bytes) -> its token, each distinct word worked out once."""

    def __missing__(self, raw: bytes) -> str:
        self[raw] = token = _token(raw.decode())
        return token


_SEPARATOR = "\x00"
# Bytes that are not in _WORD's class become spaces. Every byte of a non-ASCII character is >= 0x80, so in the bulk
# pass a non-ASCII character separates words; a title holding one is normalised again on its own (see below).
_WORD_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789%$.+/\x00")
_TO_WORDS = bytes(b if b in _WORD_BYTES else 0x20 for b in range(256))
_NON_ASCII_WORD = re.compile(r"[^\W_\x00-\x7f]")  # a letter or digit _WORD holds and _TO_WORDS does not


def normalize_titles(
    titles: Sequence[str], *, word_counts: Counter[str] | None = None, stream_into: list[str] | None = None
) -> list[str]:
    """`[normalize_title(t) for t in titles]`, computed in bulk for the hundred thousand titles of a discovery run;
    with `word_counts`, each normalised word is also counted into it; with `stream_into`, the normalised words of all
    the titles are appended to it in order, _SEPARATOR between two titles.

    The titles are lower-cased and split into words in one pass over one string, and each distinct word is
    normalised once, so the per-title Python work that dominates `normalize_title` is paid per vocabulary word. The
    few titles that pass needs help with are then redone one by one: those holding a non-ASCII character (a letter
    of another script is a word, which the pass over bytes cannot tell from punctuation) and those repeating a word.
    """
    titles = list(titles)
    joined = _SEPARATOR.join(titles)
    if joined.count(_SEPARATOR) != max(0, len(titles) - 1):  # a title holding the separator: one by one
        norms = [normalize_title(title) for title in titles]
        stream = _stream(norms)
    else:
        norms, stream = _normalize_joined(titles, joined)
    if word_counts is not None:
        word_counts.update(stream)
        word_counts.pop(_SEPARATOR, None)
    if stream_into is not None:
        stream_into.extend(stream)
    return norms


def _stream(norms: list[str]) -> list[str]:
    """The words of these normalised titles in order, _SEPARATOR between two titles."""
    return f" {_SEPARATOR} ".join(norms).split()


def _normalize_joined(titles: list[str], joined: str) -> tuple[list[str], list[str]]:
    """normalize_titles' bulk pass over the titles joined by _SEPARATOR: (normalised titles, their word stream)."""
    # Only titles with a possible question tail need the per-title headline rule: those holding one of the marks a
    # tail starts with, found by a scan for one character class (five times faster than scanning for _TAIL itself).
    starts = list(accumulate(map((1).__add__, map(len, titles)), initial=0))  # where each title starts in joined
    heads = titles
    done = -1
    for match in _TAIL_MARK.finditer(joined):
        i = bisect_right(starts, match.start()) - 1
        if i == done:
            continue
        if heads is titles:
            heads = list(titles)
        heads[i] = _headline(titles[i])
        done = i
    titles_joined = joined
    if heads is not titles:
        joined = _SEPARATOR.join(heads)
    words = joined.lower().encode().translate(_TO_WORDS).replace(b"\x00", b" \x00 ").split()
    tokens = _Tokens({b"\x00": _SEPARATOR})
    stream = list(filter(None, map(tokens.__getitem__, words)))
    if any(" " in token for token in tokens.values()):  # an alias of two words ("bfcm"): two words, as for one title
        stream = " ".join(stream).split(" ")
    norms = list(map(str.strip, " ".join(stream).split(_SEPARATOR))) if titles else []  # words between spaces
    # The titles the pass over bytes cannot do alone, found by C loops and redone one by one: those holding a letter
    # or digit that is not ASCII (non-ASCII punctuation, curly quotes and dashes, separates words as a space does),
    # and those repeating a word.
    redo = set()
    if not titles_joined.isascii():
        redo.update(bisect_right(starts, m.start()) - 1 for m in _NON_ASCII_WORD.finditer(titles_joined))
    words_in = list(map(operator.add, map(str.count, norms, repeat(" ")), map(bool, norms)))
    redo.update(compress(count(), map(operator.ne, words_in, map(len, map(set, map(str.split, norms))))))
    if not redo:
        return norms, stream
    # The stream is patched where those titles' words were: title i's words start after the words of the titles
    # before it and their i separators.
    at = list(accumulate(words_in, initial=0))
    pieces, done = [], 0
    for i in sorted(redo):
        norms[i] = normalize_title(titles[i])
        pieces += (stream[done : at[i] + i], norms[i].split())
        done = at[i + 1] + i
    pieces.append(stream[done:])
    return norms, list(chain.from_iterable(pieces))


# Names that make two otherwise alike headlines different stories ("Meta ads CPM spiked 40%" is not
# "Google Ads CPC spiked 40%"). Normalised (lower-case, plural-stemmed) as normalize_title leaves them.
DISTINGUISHING_NAMES = frozenset(
    "meta facebook instagram google youtube tiktok pinterest snapchat amazon fba shopify etsy ebay walmart "
    "woocommerce bigcommerce temu shein usp ups fedex dhl klaviyo mailchimp alibaba paypal stripe".split()
)
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


def _percentages(words: set[str]) -> set[float]:
    return {float(m.group(1)) for w in words if (m := _PERCENT.match(w))}


def _conflicting(words_a: set[str], words_b: set[str]) -> bool:
    """The titles name different platforms, or quote percentages that cannot be the same figure rounded."""
    only_a, only_b = words_a - words_b, words_b - words_a
    if only_a & DISTINGUISHING_NAMES and only_b & DISTINGUISHING_NAMES:
        return True
    pa, pb = _percentages(words_a), _percentages(words_b)
    return bool(pa and pb) and not any(abs(x - y) <= 1 for x in pa for y in pb)


def is_near_duplicate(a: str, b: str, *, threshold: int = NEAR_DUPLICATE_THRESHOLD) -> bool:
    """True when two titles tell the same story (word order, filler words and forum question tails ignored)."""
    return _same_story(normalize_title(a), normalize_title(b), threshold=threshold)


def _same_story(na: str, nb: str, *, threshold: int = NEAR_DUPLICATE_THRESHOLD) -> bool:
    """`is_near_duplicate` on titles already normalised."""
    if not na or not nb:
        return False
    words_a, words_b = set(na.split()), set(nb.split())
    if _conflicting(words_a, words_b):
        return False
    # token_set_ratio scores a subset as a perfect match; for very short titles that would merge unrelated
    # stories ("Dead stock?" vs any title mentioning dead stock), so they are compared whole instead.
    if min(na.count(" "), nb.count(" ")) < _SHORT_WORDS - 1:
        return fuzz.token_sort_ratio(na, nb) >= threshold
    # Longer titles are one story only when they share two words at least: one long shared word is enough for
    # token_set_ratio ("Dropshipping dead in 2027?" against "Dropshipping Q4 tips"), and not enough for a reader.
    if len(words_a & words_b) < 2:
        return False
    return fuzz.token_set_ratio(na, nb) >= threshold


CANONICAL_URL_MAX_CHARS = 1000  # Topic.canonical_url's column: every canonical form fits it, so lookups match


def canonical_url(url: str) -> str:
    """The URL with scheme/host lower-cased, `www.` dropped, tracking parameters and fragment removed, cut to
    CANONICAL_URL_MAX_CHARS. A URL that does not parse (a port out of range, an unclosed "[") is its own
    canonical form, stripped: one bad link from a source must not stop the run that found it."""
    if not url:
        return ""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return url.strip()[:CANONICAL_URL_MAX_CHARS]
    host = (parts.hostname or "").lower().removeprefix("www.")
    if port and port not in (80, 443):
        host = f"{host}:{port}"
    query = urlencode(sorted((k, v) for k, v in parse_qsl(parts.query) if not _TRACKING_PARAMS.match(k)))
    path = parts.path.rstrip("/") or "/"
    scheme = "https" if parts.scheme in ("http", "https", "") else parts.scheme
    return urlunsplit((scheme, host, path, query, ""))[:CANONICAL_URL_MAX_CHARS]


# Blocking. Two titles of three words or more are compared only when they share two words among the rarest of
# one of them: `is_near_duplicate` needs most of one title's words in the other, so a pair that shares fewer
# (or only words common to hundreds of titles) is almost never one story, and skipping it is what turns the
# all-against-all comparison into a near-linear one. Short titles fall under `is_near_duplicate`'s whole-title
# rule, which an exact length bound blocks instead.
_PREFIX_EXTRA = 2  # a title's "rarest" words: half of them plus this many
_PAIR_WORDS = 12  # a title's rarest words are this many at most
_SHORT_WORDS = 3  # below this many words is_near_duplicate compares titles whole (token_sort_ratio)
# token_sort_ratio(a, b) >= T needs len(b) / len(a) within [T / (200 - T), (200 - T) / T]; one character spare.
_SHORT_RATIO = (200 - NEAR_DUPLICATE_THRESHOLD) / NEAR_DUPLICATE_THRESHOLD


def _rarest(ranks: list[int]) -> list[int]:
    """A title's rarest words (as ranks, rarest first): half of them and _PREFIX_EXTRA more, at most _PAIR_WORDS."""
    return ranks[: min(len(ranks) // 2 + _PREFIX_EXTRA, _PAIR_WORDS)]


def _length_range(length: int) -> range:
    return range(max(0, math.floor(length / _SHORT_RATIO) - 1), math.ceil(length * _SHORT_RATIO) + 2)


def _lengths_in(by_length: dict[int, list[int]], length: int) -> list[int]:
    """The lengths present in `by_length` that a title of `length` characters may be compared whole with."""
    span = _length_range(length)
    if len(by_length) < len(span):
        return [n for n in by_length if n in span]
    return [n for n in span if n in by_length]


# match_stored finds the stored titles holding an incoming pair through the pairs' words while there are at most
# this many pairs per stored title, and beyond looks at each stored title's own pairs. Measured (match_stored's CPU,
# against 100,000 stored titles; through the words / each title): 500 candidates (7,546 pairs) 0.64 / 1.19 s,
# 2,000 (29,657) 1.18-1.25 / 1.21-1.43 s, 5,000 (72,022) 1.62-1.68 / 1.30-1.35 s, 20,000 3.63 / 2.26 s.
_PAIRS_PER_STORED = 0.3

# A block is keyed by a pair of word ranks and holds one number, or a list once a second one joins: most pairs of
# rare words belong to one title, and a list per block would be a million objects for the garbage collector.
Pair = tuple[int, int]
# A stored story's pairs match_stored looks it up by: (pairs of its rarest words in the incoming titles' every-pair
# blocks, pairs of any two of its words in their rare-pair blocks).
HeldPairs = tuple[list[Pair], list[Pair]]
Blocks = dict[Pair, "int | list[int]"]


def _file(blocks: Blocks, keys: Iterable[Pair], number: int) -> None:
    for key in keys:
        held = blocks.get(key)
        if held is None:
            blocks[key] = number
        elif held.__class__ is int:
            blocks[key] = [held, number]
        else:
            held.append(number)


def _gather(blocks: Blocks, keys: list[Pair], into: set[int]) -> None:
    if blocks.keys().isdisjoint(keys):  # the usual case, decided in C
        return
    for key in keys:
        held = blocks.get(key)
        if held is None:
            continue
        if held.__class__ is int:
            into.add(held)
        else:
            into.update(held)


class StoryMatcher:
    """Which earlier story does each incoming title retell?

    The answer is the one comparing it with every story would give -- among the stories whose normalised title
    scores at least NEAR_DUPLICATE_THRESHOLD (rapidfuzz token_set_ratio) and passes `is_near_duplicate`, the best
    scored, ties to the earliest -- but each title is compared (by rapidfuzz, in C) only with the stories that
    share a block with it. Stories are numbered: the stored ones first, in the order given, then each incoming
    title that `add` turns into a story of its own.

    Use: `match_stored(indices)` once, for the incoming titles that will be looked up (it compares them with every
    stored story in one pass and returns the best stored story of each); then, in order, `find(i)` for incoming
    title i, and `add(i)` when it is a new story.
    """

    def __init__(self, *, stored: Sequence[str], incoming: Sequence[str]):
        self._stored = len(stored)
        # Word rarity over every title of the run, one order for all, so that two titles' rarest words agree.
        counts: Counter[str] = Counter()
        self._words_in_order: list[str] = []  # every title's words, _SEPARATOR between two titles (for match_stored)
        self._norms = normalize_titles([*stored, *incoming], word_counts=counts,
                                       stream_into=self._words_in_order if stored else None)
        self._words = sorted(counts, key=lambda w: (counts[w], w))  # rank -> word
        self._rank = {word: n for n, word in enumerate(self._words)}
        self._best_stored: dict[int, tuple[float, int]] = {}
        self._last_keys: tuple[int, list[Pair], list[Pair]] = (-1, [], [])  # find's keys, for add
        self._story_titles: list[int] = list(range(self._stored))  # story number -> title index
        # The new stories' blocks: by the pairs of their rarest words, by the pairs of all their words, by length.
        # All their words: a short title held whole in a long one shares its rarest words with it, which may be
        # among the long one's commonest.
        self._rare: Blocks = {}
        self._every: Blocks = {}
        self._by_length: defaultdict[int, list[int]] = defaultdict(list)
        self._short_by_length: defaultdict[int, list[int]] = defaultdict(list)

    def _ranks(self, norm: str) -> list[int]:
        """A normalised title's distinct words as ranks, rarest first."""
        return sorted(set(map(self._rank.__getitem__, norm.split())))

    def _keys(self, norm: str) -> tuple[list[Pair], list[Pair]]:
        """Block keys of a normalised title: (pairs of its rarest words, pairs of any two of its words)."""
        ranks = self._ranks(norm)
        return list(combinations(_rarest(ranks), 2)), list(combinations(ranks, 2))

    def _is_short(self, t: int) -> bool:
        return self._norms[t].count(" ") < _SHORT_WORDS - 1

    def match_stored(self, indices: Iterable[int]) -> dict[int, int]:
        """Compare these incoming titles with every stored story; returns {incoming index: best stored story}."""
        wanted = [self._stored + i for i in indices]
        if not self._stored or not wanted:
            return {}
        # The stored side is the large one (a hundred thousand titles): it is the incoming titles that are put
        # in blocks, and each stored title is checked against them.
        rare: Blocks = {}
        every: Blocks = {}
        short_lengths: set[int] = set()
        for t in wanted:
            if self._is_short(t):
                short_lengths.update(_length_range(len(self._norms[t])))
            else:
                rare_keys, every_keys = self._keys(self._norms[t])
                _file(rare, rare_keys, t)
                _file(every, every_keys, t)
        choices: defaultdict[int, set[int]] = defaultdict(set)
        by_length: defaultdict[int, list[int]] = defaultdict(list)  # short stories, and any a short title may be
        stored_norms = self._norms[: self._stored]
        few_words = map((_SHORT_WORDS - 1).__gt__, map(str.count, stored_norms, repeat(" ")))
        as_long = map(short_lengths.__contains__, map(len, stored_norms))
        for s in compress(count(), map(operator.or_, few_words, as_long)):  # in C: no Python loop over every title
            by_length[len(stored_norms[s])].append(s)
        # Each stored story's rare pairs against the incoming titles' pairs, and the other way round: a title mostly
        # contained in a longer one shares its own rarest words with it, not necessarily the longer one's.
        held_pairs = (self._stored_pairs(rare=rare, every=every) if len(every) <= _PAIRS_PER_STORED * self._stored
                      else self._scan_stored(rare=rare, every=every))
        for s, (every_pairs, rare_pairs) in held_pairs.items():
            for pair in every_pairs:
                _add_held(every[pair], s, choices)
            for pair in rare_pairs:
                _add_held(rare[pair], s, choices)
        for t in wanted:
            short = self._is_short(t)
            found = choices.get(t, set())
            for length in _lengths_in(by_length, len(self._norms[t])):
                found.update(s for s in by_length[length] if short or self._is_short(s))
            best = self._best(t, found)
            if best is not None:
                self._best_stored[t - self._stored] = best
        return {t: story for t, (_, story) in self._best_stored.items()}

    def _stored_pairs(self, *, rare: Blocks, every: Blocks) -> dict[int, HeldPairs]:
        """For each stored story of three words or more that holds both words of one of the incoming titles' pairs,
        the pairs `match_stored` looks it up by: those among its rarest words in `every`, and those in `rare`. Stories
        holding no such pair are not in the answer.

        Found without a Python loop over each of the hundred thousand stored titles: the paired words are picked out
        of all the titles' words in C, and a pair's stories are the intersection of its two words' stories; only the
        stories found are then looked at one by one.
        """
        paired_words = set(map(self._words.__getitem__, {rank for pair in every for rank in pair}))
        stream = self._words_in_order
        picked = list(map(paired_words.__contains__, stream))
        # The number of the title each word (and the separator after it) belongs to: each title's number repeated
        # once per word and once for its separator, the same int object each time (accumulate made 800,000 new ones).
        norms = self._norms
        sizes = map(operator.add, map(str.count, norms, repeat(" ")), map((2).__sub__, map(operator.not_, norms)))
        title_of = chain.from_iterable(map(repeat, count(), sizes))
        holders: defaultdict[str, list[int]] = defaultdict(list)  # paired word -> the titles holding it
        for word, s in zip(compress(stream, picked), compress(title_of, picked), strict=True):
            holders[word].append(s)
        held = {word: set(titles) for word, titles in holders.items()}
        nobody: set[int] = set()
        holding: defaultdict[int, list[Pair]] = defaultdict(list)  # stored story -> the incoming pairs it holds
        for pair in every:
            for s in held.get(self._words[pair[0]], nobody) & held.get(self._words[pair[1]], nobody):
                if s < self._stored:
                    holding[s].append(pair)
        found: dict[int, HeldPairs] = {}
        for s, pairs in holding.items():
            if self._is_short(s):
                continue
            head = set(_rarest(self._ranks(self._norms[s])))
            found[s] = ([pair for pair in pairs if head.issuperset(pair)], [pair for pair in pairs if pair in rare])
        return found

    def _scan_stored(self, *, rare: Blocks, every: Blocks) -> dict[int, HeldPairs]:
        """What `_stored_pairs` answers, found by looking at each stored title's own pairs: the cheaper way when the
        incoming titles bring many pairs for the stored titles there are (thousands of candidates against a smaller
        window). A title neither of whose word sets holds such a pair is passed over by a few set operations in C."""
        every_partners, rare_partners = _partners(every), _partners(rare)
        found: dict[int, HeldPairs] = {}
        for s in range(self._stored):
            if self._is_short(s):
                continue
            ranks = self._ranks(self._norms[s])
            head = _rarest(ranks)
            every_pairs: list[Pair] = []
            rare_pairs: list[Pair] = []
            if _paired(head, every_partners):
                every_pairs = list(filter(every.__contains__, combinations(head, 2)))
            if _paired(ranks, rare_partners):
                rare_pairs = list(filter(rare.__contains__, combinations(ranks, 2)))
            if every_pairs or rare_pairs:
                found[s] = (every_pairs, rare_pairs)
        return found

    def find(self, i: int) -> int | None:
        """The story incoming title i retells (a stored one from `match_stored`, or an earlier new one), or None."""
        t = self._stored + i
        norm = self._norms[t]
        found: set[int] = set()
        if self._is_short(t):
            for length in _lengths_in(self._by_length, len(norm)):
                found.update(self._by_length[length])
        else:
            rare_keys, every_keys = self._keys(norm)
            self._last_keys = (t, rare_keys, every_keys)
            _gather(self._every, rare_keys, found)
            _gather(self._rare, every_keys, found)
            for length in _lengths_in(self._short_by_length, len(norm)):
                found.update(self._short_by_length[length])
        matches = [best for best in (self._best_stored.get(i), self._best(t, found)) if best is not None]
        # Best score first; on a tie the earlier story, as one exhaustive rapidfuzz extract would order them.
        return min(matches, key=lambda best: (-best[0], best[1]))[1] if matches else None

    def add(self, i: int) -> int:
        """Incoming title i becomes a story of its own; returns its story number."""
        t = self._stored + i
        story = len(self._story_titles)
        self._story_titles.append(t)
        norm = self._norms[t]
        self._by_length[len(norm)].append(story)
        if self._is_short(t):
            self._short_by_length[len(norm)].append(story)
        else:
            last, rare_keys, every_keys = self._last_keys
            if last != t:
                rare_keys, every_keys = self._keys(norm)
            _file(self._rare, rare_keys, story)
            _file(self._every, every_keys, story)
        return story

    def _best(self, t: int, stories: set[int]) -> tuple[float, int] | None:
        """(score, story) of the first of these stories, best scored first, then earliest, that title t retells."""
        norm = self._norms[t]
        if not stories or not norm:
            return None
        ordered = sorted(stories)
        texts = [self._norms[self._story_titles[story]] for story in ordered]
        for _, score, k in process.extract(
            norm, texts, scorer=fuzz.token_set_ratio, score_cutoff=NEAR_DUPLICATE_THRESHOLD, limit=None
        ):
            if _same_story(norm, texts[k]):
                return score, ordered[k]
        return None


def _partners(blocks: Blocks) -> dict[int, set[int]]:
    """For each word of the blocks' pairs, the words it is paired with."""
    partners: defaultdict[int, set[int]] = defaultdict(set)
    for a, b in blocks:
        partners[a].add(b)
    return dict(partners)


def _paired(ranks: list[int], partners: dict[int, set[int]]) -> bool:
    """Whether two of these words make a pair that `partners` holds (a test of a few set operations in C)."""
    for word in ranks:
        paired = partners.get(word)
        if paired is not None and not paired.isdisjoint(ranks):
            return True
    return False


def _add_held(held: int | list[int], story: int, choices: defaultdict[int, set[int]]) -> None:
    """Note `story` as a choice of each incoming title a block holds."""
    if held.__class__ is int:
        choices[held].add(story)
    else:
        for t in held:
            choices[t].add(story)
