"""Near-duplicate detection: the same story told by two sources must count once."""
from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rapidfuzz import fuzz

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


def _stem(word: str) -> str:
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "ps")):
        return word[:-1]
    return word


@lru_cache(maxsize=65536)
def normalize_title(title: str) -> str:
    """Lower-cased content words, light plural stemming, month and event aliases, forum question tails cut."""
    head = _TAIL.split(title.strip(), maxsplit=1)[0]
    if len(head.split()) >= 4:
        title = head
    words = []
    for raw in re.findall(r"[a-z0-9%$.+/]+", title.lower()):
        word = raw.strip(".")
        if not word or word in _STOPWORDS:
            continue
        words.append(_ALIASES.get(word, _stem(word)))
    return " ".join(words)


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
    na, nb = normalize_title(a), normalize_title(b)
    if not na or not nb:
        return False
    if _conflicting(set(na.split()), set(nb.split())):
        return False
    # token_set_ratio scores a subset as a perfect match; for very short titles that would merge unrelated
    # stories ("Dead stock?" vs any title mentioning dead stock), so they are compared whole instead.
    if min(na.count(" "), nb.count(" ")) < 2:
        return fuzz.token_sort_ratio(na, nb) >= threshold
    return fuzz.token_set_ratio(na, nb) >= threshold


def canonical_url(url: str) -> str:
    """The URL with scheme/host lower-cased, `www.` dropped, tracking parameters and fragment removed."""
    if not url:
        return ""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower().removeprefix("www.")
    if parts.port and parts.port not in (80, 443):
        host = f"{host}:{parts.port}"
    query = urlencode(sorted((k, v) for k, v in parse_qsl(parts.query) if not _TRACKING_PARAMS.match(k)))
    path = parts.path.rstrip("/") or "/"
    return urlunsplit(("https" if parts.scheme in ("http", "https", "") else parts.scheme, host, path, query, ""))
