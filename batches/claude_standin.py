"""A loopback fake of the Anthropic Messages API, spoken over real HTTP.

The unmodified ``anthropic`` SDK talks to it through ``base_url`` / ``ANTHROPIC_BASE_URL``.
Bodies, error envelopes and headers follow recorded traffic from the real API:

* ``POST /v1/messages``: a ``Message`` (``tool_use`` when tools are given, else ``text``), with
  the full ``usage`` object including prompt-cache writes and reads; ``"stream": true`` answers SSE.
* ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``.
* Errors: ``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`` with
  ``request-id``, ``x-should-retry`` and (when set) ``retry-after`` headers, which drive the SDK's
  own retry logic exactly as the real API does.
* Grounding: when the prompt carries numbered sources (a ``<source_material>`` fence), the draft quotes a
  figure-bearing sentence of each of the first sources with its ``[n]`` marker and lists the numbers it cited in
  the tool's ``sources_used``; :meth:`FakeAnthropicServer.plant` makes it add a figure, a link or a citation that
  no source holds, for the checks to catch.
* ``/_fake/...``: test-only control endpoints (stats, reset, faults, config), so a server run from
  the CLI in another process can still be steered and inspected (see :class:`RemoteFakeAnthropic`).

Standard library only. Run ``python -m batches.claude_standin --port 8765`` for a foreground server.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import secrets
import signal
import socket
import string
import sys
import threading
import time
import traceback
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "FAULT_KINDS",
    "FakeAnthropicServer",
    "Fault",
    "Plant",
    "RemoteFakeAnthropic",
    "estimate_tokens",
    "request_input_tokens",
]

JSONDict = dict[str, Any]
Predicate = Callable[[JSONDict], bool]

FAULT_KINDS = ("error", "timeout", "disconnect", "malformed", "text_only", "no_usage", "nul_body", "over_usage",
               "unreadable", "stop_reason")
# What an "unreadable" 200 carries: bodies a proxy or a broken hop can hand back instead of the API's JSON.
UNREADABLE_BODIES: dict[str, tuple[str, bytes]] = {
    "html": ("text/html; charset=utf-8",
             b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"),
    "empty": ("application/json", b""),
    "not_json": ("application/json", b"{\"id\": \"msg_01\", \"type\": \"message\", \"content\": ["),
    "not_utf8": ("application/json", b"{\"id\": \"msg_\xff\xfe\x80\", \"type\": \"message\"}"),
}

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

DEFAULT_ERROR_MESSAGES: dict[int, str] = {
    400: "messages.0.content.0.text: The request could not be processed. Please check the input and try again.",
    401: "invalid x-api-key",
    402: (
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits."
    ),
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not Found",
    408: "Request timed out",
    409: "Conflict",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: (
        "This request would exceed the rate limit for your organization of 50 requests per minute "
        "(model: {model}). For details, refer to: https://docs.claude.com/en/api/rate-limits. "
        "You can see the response headers for current usage. Please reduce the prompt length or the "
        "maximum tokens requested, or try again later."
    ),
    500: "Internal server error",
    504: "Request timed out",
    529: "Overloaded",
}

REASON_PHRASES: dict[int, str] = {529: "Overloaded", 413: "Request Entity Too Large"}

CACHE_TTL_SECONDS: dict[str, float] = {"5m": 300.0, "1h": 3600.0}
MAX_CACHE_BREAKPOINTS = 4
_BASE62 = string.ascii_letters + string.digits


def estimate_tokens(text: str) -> int:
    """Rough token count used everywhere in the fake: ceil(len/4), at least 1."""
    return max(1, math.ceil(len(text) / 4))


def request_input_tokens(body: JSONDict) -> int:
    """Total input tokens of a request (input + cache write + cache read), as count_tokens reports."""
    return sum(seg.tokens for seg in _segments(body))


def _random_id(prefix: str, length: int) -> str:
    return prefix + "".join(secrets.choice(_BASE62) for _ in range(length))


def _request_id() -> str:
    return _random_id("req_011C", 20)


def _should_retry(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _mask_secret(value: str) -> str:
    """Hide a credential header value; keeps the auth scheme and at most the last 4 characters."""
    scheme, _, token = value.rpartition(" ")
    masked = "****" + token[-4:] if len(token) > 8 else "****"
    return f"{scheme} {masked}" if scheme else masked


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour.

    kind ``error`` (implied by ``status``) answers that HTTP error; ``timeout`` waits ``seconds``
    and then answers normally; ``disconnect`` closes the connection without answering;
    ``malformed`` answers 200 with a tool input that breaks its schema; ``text_only`` answers
    200 with a text block and no ``tool_use``; ``no_usage`` answers 200 without a ``usage`` object;
    ``nul_body`` puts NUL bytes in every string of the tool input; ``over_usage`` reports ``seconds`` times the
    input tokens the request really had; ``unreadable`` answers 200 with a body that is not the API's JSON
    (``message`` names the shape: html, empty, not_json or not_utf8); ``stop_reason`` answers as usual but stopped for
    the reason ``message`` names (``refusal`` unless given; ``model_context_window_exceeded``, ``pause_turn``).
    """

    status: int | None = None
    kind: str = "error"
    retry_after: float | None = None
    seconds: float = 30.0
    message: str | None = None
    error_type: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.kind == "error" and (self.status is None or not 400 <= self.status <= 599):
            raise ValueError("an error fault needs an HTTP status between 400 and 599")

    @classmethod
    def from_dict(cls, data: JSONDict) -> Fault:
        """Build a fault from its JSON form (used by the control endpoint)."""
        allowed = {"status", "kind", "retry_after", "seconds", "message", "error_type"}
        return cls(**{k: v for k, v in data.items() if k in allowed})


@dataclass(frozen=True)
class Plant:
    """What a draft should state that its sources do not: a figure ("37.5%"), a link, a citation number."""

    figure: str | None = None
    link: str | None = None
    citation: int | None = None

    @classmethod
    def from_dict(cls, data: JSONDict) -> Plant:
        return cls(**{k: v for k, v in data.items() if k in ("figure", "link", "citation")})

    def sentences(self, *, cite: int | None) -> list[str]:
        marker = f" [{cite}]" if cite else ""
        out = []
        if self.figure:
            out.append(f"One seller in the thread says {self.figure} of their orders were affected{marker}.")
        if self.link:
            out.append(f"The full breakdown is in [this guide]({self.link}).")
        if self.citation is not None:
            out.append(f"Carriers are expected to follow with changes of their own [{self.citation}].")
        return out


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Segment:
    """A unit of the prompt in cache order (one tool, system block, or message block)."""

    text: str
    tokens: int
    cache_ttl: str | None  # set when this block carries an ephemeral cache_control breakpoint


class _RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- prompt accounting


def _without_cache_control(block: Any) -> Any:
    if isinstance(block, dict):
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _breakpoint_ttl(block: Any) -> str | None:
    if isinstance(block, dict):
        cc = block.get("cache_control")
        if isinstance(cc, dict) and cc.get("type") == "ephemeral":
            return "1h" if cc.get("ttl") == "1h" else "5m"
    return None


def _segment(payload: Any, source: Any) -> _Segment:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return _Segment(text=text, tokens=estimate_tokens(text), cache_ttl=_breakpoint_ttl(source))


def _segments(body: JSONDict) -> list[_Segment]:
    """Prompt blocks in the order the real API caches them: tools, then system, then messages."""
    out: list[_Segment] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        out += [_segment(_without_cache_control(tool), tool) for tool in tools]
    system = body.get("system")
    if isinstance(system, str) and system:
        out.append(_segment(system, None))
    elif isinstance(system, list):
        out += [_segment(_without_cache_control(block), block) for block in system]
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            role, content = message.get("role"), message.get("content")
            if isinstance(content, list):
                out += [_segment([role, _without_cache_control(block)], block) for block in content]
            else:
                out.append(_segment([role, content], None))
    top_level = _breakpoint_ttl(body)
    if top_level and out and out[-1].cache_ttl is None:
        # Automatic caching: a top-level cache_control puts the breakpoint on the last block.
        last = out[-1]
        out[-1] = _Segment(text=last.text, tokens=last.tokens, cache_ttl=top_level)
    return out


# --------------------------------------------------------------------------- content generation

_ACTIONS = (
    "Audit the last 90 days of orders to see where {t} already shows up in your numbers",
    "Rework one product page this week with {t} in mind and compare conversion against last month",
    "Ask your top ten repeat customers how {t} changes what they expect from you",
    "Put a number on what {t} costs you per order before you change anything",
    "Test a small change tied to {t} on your best-selling SKU before rolling it out",
    "Check whether your shipping and returns policy still holds up given {t}",
    "Set a calendar reminder to review the effect of {t} on margins in 30 days",
    "Brief your support team on {t} so they answer customer questions consistently",
)
_ANGLES = (
    "Margins are thin, and small shifts around {t} compound quickly across a catalogue.",
    "Sellers who moved early on {t} report steadier conversion and fewer surprises at checkout.",
    "Marketplaces and DTC storefronts feel {t} differently, so the right response depends on your mix.",
    "The cost of ignoring {t} rarely shows up in one month, but it is obvious over a quarter.",
)
_OPENERS = (
    "{T} is on a lot of independent sellers' minds this week.",
    "If you run a Shopify store or sell on Amazon, {t} deserves ten minutes of your attention.",
    "{T} keeps coming up in seller communities, and for good reason.",
)
_TOPIC_LINE = re.compile(
    r'^\s*[-*#>\s]*"?(?:topic|title|headline|subject)"?\s*[:\-–]\s*"?(.+?)"?,?\s*$', re.I | re.M
)
_SUMMARY_LINE = re.compile(
    r'^\s*[-*#>\s]*"?(?:summary|description|context)"?\s*[:\-–]\s*"?(.+?)"?,?\s*$', re.I | re.M
)
_TOPIC_TAG = re.compile(r"<(topic|title|headline)>\s*(.+?)\s*</\1>", re.I | re.S)
_SUMMARY_TAG = re.compile(r"<(summary|description)>\s*(.+?)\s*</\1>", re.I | re.S)
_LONG_FIELD = ("body", "content", "markdown", "article", "draft", "html", "text", "newsletter")
_MEDIUM_FIELD = ("summary", "description", "preview", "intro", "excerpt", "teaser", "abstract", "reason")
_TITLE_FIELD = ("subject", "title", "headline", "name", "heading")


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif isinstance(block, dict) and block.get("type") == "tool_result":
                parts.append(_message_text(block.get("content")))
    return "\n".join(parts)


def _last_user_text(body: JSONDict) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _message_text(message.get("content")).strip()
            if text:
                return text
    return ""


def _clip_words(text: str, limit: int) -> str:
    """Cut text to at most ``limit`` characters, on a word boundary when possible."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    if " " in cut[1:] and not text[limit:limit + 1].isspace():
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;:-–") or text[:limit]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "topic"


# Advice without numbers: a grounded draft takes every figure from its sources.
_GROUNDED_ACTIONS = (
    "Check which of your best sellers {t} touches first, and note what it costs you per order",
    "Open your shipping and returns settings and see whether they still hold up given {t}",
    "Ask a few of your repeat customers how {t} changes what they expect from you",
    "Test one small change tied to {t} on your best-selling product before rolling it out",
    "Brief whoever answers customer email on {t} so every reply says the same thing",
)
_SOURCE_FENCE = re.compile(r"<source_material>\s*(.*?)\s*</source_material>", re.S)


def _sources_in(user: str) -> list[JSONDict]:
    """The numbered sources a prompt carries (``[{"n", "title", "url", "text"}, ...]``), or []."""
    match = _SOURCE_FENCE.search(user)
    if not match:
        return []
    try:
        sources = json.loads(match.group(1))
    except ValueError:
        return []
    return [s for s in sources if isinstance(s, dict) and isinstance(s.get("n"), int) and s.get("text")]


def _fact_sentence(text: str) -> str:
    """The first full sentence of ``text`` that states a number (else its first sentence), without its full stop.

    Headings and other lines that do not end a sentence are passed over, as a writer quoting a source would."""
    parts: list[str] = []
    for paragraph in text.split("\n"):
        flat = " ".join(paragraph.split())
        parts += [p for p in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9$])", flat) if len(p) > 20 and p[-1] in ".!?"]
    chosen = next((p for p in parts if re.search(r"\d", p)), parts[0] if parts else " ".join(text.split()))
    return _clip_words(chosen, 300).rstrip(" .!?")


class _Writer:
    """Turns a request into plausible, topic-specific text and JSON-schema-shaped tool input."""

    def __init__(self, body: JSONDict, plant: Plant | None = None) -> None:
        user = _last_user_text(body)
        self.sources = _sources_in(user)
        self.plant = plant
        self.cited: list[int] = []
        topic_match = _TOPIC_TAG.search(user) or _TOPIC_LINE.search(user)
        if topic_match:
            topic = topic_match.group(topic_match.lastindex or 1)
        else:
            lines = [ln.strip(" #*->\t") for ln in user.splitlines() if ln.strip(" #*->\t")]
            topic = lines[0] if lines else "this week's e-commerce news"
        self.topic = _clip_words(" ".join(topic.split()).rstrip("."), 100)
        summary_match = _SUMMARY_TAG.search(user) or _SUMMARY_LINE.search(user)
        summary = summary_match.group(summary_match.lastindex or 1) if summary_match else ""
        self.summary = _clip_words(" ".join(summary.split()), 300)
        # Seeded by the whole prompt so two topics never read alike, yet a retry reads the same.
        seed = hashlib.sha256(user.encode("utf-8")).digest()
        self.rng = random.Random(int.from_bytes(seed[:8], "big"))

    # -- strings
    def _fill(self, template: str) -> str:
        return template.format(t=self.topic, T=self.topic[:1].upper() + self.topic[1:])

    def title(self) -> str:
        return self._fill(self.rng.choice(("{T}: what it means for your store", "{T}: what sellers should do now")))

    def sentence(self) -> str:
        return self._fill(self.rng.choice(_ANGLES))

    def short(self) -> str:
        return self._fill("A practical look at {t} and three moves to make this week.")

    def grounded_article(self) -> str:
        facts = []
        for source in self.sources[:3]:
            facts.append(f"{_fact_sentence(source['text'])} [{source['n']}].")
            self.cited.append(source["n"])
        if self.plant:
            facts += self.plant.sentences(cite=self.cited[0] if self.cited else None)
        actions = self.rng.sample(_GROUNDED_ACTIONS, 3)
        parts = [
            " ".join(filter(None, [self._fill(self.rng.choice(_OPENERS)), self.summary])),
            "## What the sources say",
            " ".join(facts),
            "## What to do this week",
            "\n".join(f"{i}. {self._fill(a)}." for i, a in enumerate(actions, start=1)),
            self._fill("None of this needs a big budget: pick one step and see what it does for your numbers."),
            self._fill("**Reply and tell us how {t} is showing up in your store.**"),
        ]
        return "\n\n".join(parts)

    def article(self) -> str:
        if self.sources:
            return self.grounded_article()
        actions = self.rng.sample(_ACTIONS, 3)
        parts = [
            f"## {self.title()}",
            " ".join(filter(None, [self._fill(self.rng.choice(_OPENERS)), self.summary])),
            f"**Why it matters:** {self.sentence()} " + self._fill(
                "The stores that handle {t} well treat it as an operating habit, not a one-off project."
            ),
            "**What to do this week:**\n" + "\n".join(f"- {self._fill(a)}." for a in actions),
            " ".join(self.plant.sentences(cite=None)) if self.plant else "",
            self._fill(
                "None of this needs a big budget. Pick one step, measure it for two weeks, and keep what "
                "moves your numbers. We will keep tracking {t} and report back in the next issue."
            ),
        ]
        return "\n\n".join(parts)

    def text_reply(self) -> str:
        return self.article()

    def string_for(self, name: str, schema: JSONDict) -> str:
        lname = name.lower()
        fmt = schema.get("format")
        if fmt == "date-time":
            value = "2025-01-15T09:00:00Z"
        elif fmt == "date":
            value = "2025-01-15"
        elif fmt in ("uri", "url") or "url" in lname or "link" in lname:
            value = f"https://example.com/newsletter/{_slug(self.topic)}"
        elif fmt == "email" or "email" in lname:
            value = "editor@example.com"
        elif "slug" in lname:
            value = _slug(self.topic)
        elif any(k in lname for k in _TITLE_FIELD):
            value = self.title()
        elif any(k in lname for k in _MEDIUM_FIELD):
            value = self.short()
        elif any(k in lname for k in _LONG_FIELD):
            value = self.article()
        else:
            value = self.topic
        max_len = schema.get("maxLength")
        if isinstance(max_len, int) and max_len >= 0:
            value = _clip_words(value, max_len)
        min_len = schema.get("minLength")
        if isinstance(min_len, int) and len(value) < min_len:
            filler = " " + self.sentence()
            while len(value) < min_len:
                value += filler
            if isinstance(max_len, int):
                value = value[:max_len]
        return value

    # -- JSON schema
    def value_for(self, name: str, schema: Any, root: JSONDict, index: int = 0) -> Any:
        if not isinstance(schema, dict):
            return self.topic
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            return self.value_for(name, target, root, index)
        if "const" in schema:
            return schema["const"]
        if "default" in schema and schema["default"] is not None:
            return schema["default"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][index % len(schema["enum"])]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                chosen = next((o for o in options if isinstance(o, dict) and o.get("type") != "null"), options[0])
                return self.value_for(name, chosen, root, index)
        if isinstance(schema.get("allOf"), list):
            merged: JSONDict = {"type": "object", "properties": {}, "required": []}
            for part in schema["allOf"]:
                if isinstance(part, dict):
                    merged["properties"].update(part.get("properties", {}))
            return self.value_for(name, merged, root, index)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind == "object":
            props = schema.get("properties") or {}
            return {key: self.value_for(key, sub, root) for key, sub in props.items()}
        if kind == "array":
            low = schema.get("minItems", 0)
            high = schema.get("maxItems", max(3, low))
            count = max(low, min(3, high))
            item_name = name[:-1] if name.endswith("s") else name
            items = [self.value_for(item_name, schema.get("items", {}), root, i) for i in range(count)]
            if all(isinstance(x, str) for x in items) and len(set(items)) < len(items):
                # Arrays of short strings (tags, key points) should have distinct, meaningful items.
                picks = self.rng.sample(_ACTIONS, min(count, len(_ACTIONS)))
                items = [self._fill(p) + "." for p in picks] + items[len(picks):]
                if isinstance(schema.get("items"), dict) and isinstance(schema["items"].get("maxLength"), int):
                    items = [_clip_words(x, schema["items"]["maxLength"]) for x in items]
            return items
        if kind == "string":
            return self.string_for(name, schema)
        if kind == "integer":
            low = int(schema["minimum"]) if "minimum" in schema else 1
            if "exclusiveMinimum" in schema:
                low = int(schema["exclusiveMinimum"]) + 1
            high = int(schema["maximum"]) if "maximum" in schema else low + 9
            if "exclusiveMaximum" in schema:
                high = int(schema["exclusiveMaximum"]) - 1
            return self.rng.randint(low, max(low, high))
        if kind == "number":
            low = float(schema.get("minimum", 0.0))
            high = float(schema.get("maximum", low + 10.0))
            return round(self.rng.uniform(low, high), 2)
        if kind == "boolean":
            return True
        return None


def _wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, str):
        return 12345
    if isinstance(value, (int, float)):
        return "not a number"
    if isinstance(value, (list, dict)):
        return "oops"
    return 0


def _malform(tool_input: JSONDict, schema: JSONDict) -> JSONDict:
    """Drop the first required field and give the next field the wrong type."""
    out = dict(tool_input)
    required = [r for r in schema.get("required") or list(out) if r in out]
    if required:
        out.pop(required[0])
    for key in list(out):
        out[key] = _wrong_type(out[key])
        break
    return out


def _truncate_input(tool_input: JSONDict, max_tokens: int) -> JSONDict:
    partial: JSONDict = {}
    for key, value in tool_input.items():
        trial = {**partial, key: value}
        if estimate_tokens(json.dumps(trial)) > max_tokens:
            break
        partial = trial
    return partial


# --------------------------------------------------------------------------- request validation


def _field_error(path: str, message: str) -> _RequestError:
    return _RequestError(400, f"{path}: {message}")


def _validate_messages_body(body: JSONDict, *, need_max_tokens: bool, max_output_tokens: int) -> None:
    model = body.get("model")
    if model is None:
        raise _field_error("model", "Field required")
    if not isinstance(model, str) or not model:
        raise _field_error("model", "Input should be a valid string")
    if need_max_tokens:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _field_error("max_tokens", "Field required")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise _field_error("max_tokens", "Input should be a valid integer")
        if max_tokens < 1:
            raise _field_error("max_tokens", "Input should be greater than or equal to 1")
        if max_tokens > max_output_tokens:
            raise _RequestError(
                400,
                f"max_tokens: {max_tokens} > {max_output_tokens}, which is the maximum allowed number of "
                f"output tokens for {model}",
            )
    messages = body.get("messages")
    if messages is None:
        raise _field_error("messages", "Field required")
    if not isinstance(messages, list):
        raise _field_error("messages", "Input should be a valid list")
    if not messages:
        raise _field_error("messages", "at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _field_error(f"messages.{i}", "Input should be a valid dictionary")
        if message.get("role") not in ("user", "assistant"):
            raise _field_error(f"messages.{i}.role", "Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise _field_error(f"messages.{i}.content", "Field required")
        content = message["content"]
        if not isinstance(content, (str, list)):
            raise _field_error(f"messages.{i}.content", "Input should be a valid string or list")
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise _field_error("system", "Input should be a valid string or list")
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise _field_error("temperature", "Input should be a valid number")
        if temperature < 0:
            raise _field_error("temperature", "Input should be greater than or equal to 0")
        if temperature > 1:
            raise _field_error("temperature", "Input should be less than or equal to 1")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _field_error("tools", "Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not tool.get("name"):
                raise _field_error(f"tools.{i}.name", "Field required")
            if "type" not in tool and not isinstance(tool.get("input_schema"), dict):
                raise _field_error(f"tools.{i}.custom.input_schema", "Field required")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        names = [t.get("name") for t in tools or [] if isinstance(t, dict)]
        if choice.get("name") not in names:
            raise _RequestError(400, f"tool_choice: Tool '{choice.get('name')}' not found in provided tools")
    breakpoints = sum(1 for seg in _segments(body) if seg.cache_ttl)
    if breakpoints > MAX_CACHE_BREAKPOINTS:
        raise _RequestError(
            400, f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. Found {breakpoints}."
        )
    if not model.startswith("claude-"):
        raise _RequestError(404, f"model: {model}")


# --------------------------------------------------------------------------- HTTP plumbing


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeAnthropicServer) -> None:
        self.fake = fake
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that dies mid-request (the fault tests SIGKILL workers) is no error of the fake's.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    def close_open_connections(self) -> None:
        # Keep-alive connections would otherwise keep being served by their threads after stop().
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeAnthropic/1.0"
    timeout = 60
    # The status line and headers go out in one write and the body in another: with Nagle's algorithm on, the
    # body waited for the client's delayed ACK of the headers (40 ms on Linux), a stall the real API never has.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def _serve(self) -> None:
        try:
            reply = self.server.fake._handle(self)
        except Exception:  # pragma: no cover - a bug in the fake must surface, not hang the client
            traceback.print_exc(file=sys.stderr)
            reply = _error_reply(500, "Internal server error")
        if reply is None:
            self.close_connection = True
            return
        try:
            self.send_response(reply.status, REASON_PHRASES.get(reply.status))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _json_reply(status: int, payload: Any, request_id: str | None = None, **headers: str) -> _Reply:
    rid = request_id or _request_id()
    base = {"content-type": "application/json", "request-id": rid}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return _Reply(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), base)


def _error_reply(
    status: int, message: str, error_type: str | None = None, retry_after: float | None = None
) -> _Reply:
    rid = _request_id()
    payload = {
        "type": "error",
        "error": {"type": error_type or ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": rid,
    }
    reply = _json_reply(status, payload, rid)
    reply.headers["x-should-retry"] = "true" if _should_retry(status) else "false"
    if retry_after is not None:
        reply.headers["retry-after"] = _format_seconds(retry_after)
    return reply


def _sse(events: list[JSONDict]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events).encode()


def _chunks(text: str, size: int = 40) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start:start + size]


# --------------------------------------------------------------------------- the server


class FakeAnthropicServer:
    """In-process fake Anthropic API on 127.0.0.1, served from a daemon thread.

    Usage::

        with FakeAnthropicServer() as server:
            client = anthropic.Anthropic(api_key="test-key", base_url=server.base_url)
    """

    def __init__(
        self,
        latency: float = 0.0,
        min_cacheable_tokens: int = 1024,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_output_tokens: int = 64000,
    ) -> None:
        self.latency = latency
        self.min_cacheable_tokens = min_cacheable_tokens
        self.max_output_tokens = max_output_tokens
        self.host = host
        self.usage_overrides: dict[str, Any] = {}
        self.count_tokens_faults: deque[Fault] = deque()
        self._requested_port = port
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._rules: list[tuple[Predicate, Fault]] = []
        self._plants: deque[Plant] = deque()
        self._plant_rules: list[tuple[Predicate, Plant]] = []
        self._requests: list[JSONDict] = []
        self._cache: dict[str, float] = {}  # prefix hash -> expiry (monotonic seconds)
        self._message_calls = 0
        self._answers: list[JSONDict] = []
        self._count_tokens_calls = 0
        self._usage_totals = self._zero_totals()
        self._cancel = threading.Event()
        self._arrived = threading.local()  # when the request this thread serves arrived
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> FakeAnthropicServer:
        """Bind and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("FakeAnthropicServer is already running")
        self._cancel = threading.Event()
        self._httpd = _HTTPServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; in-flight delayed answers are dropped."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._cancel.set()
        httpd.shutdown()
        httpd.close_open_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeAnthropicServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeAnthropicServer is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- test controls
    def enqueue(self, *faults: Fault) -> None:
        """Queue faults; each /v1/messages request not caught by a rule consumes one, FIFO."""
        with self._lock:
            self._faults.extend(faults)

    def enqueue_count_tokens(self, *faults: Fault) -> None:
        """Queue faults for /v1/messages/count_tokens only (rules and ``enqueue`` never touch it)."""
        with self._lock:
            self.count_tokens_faults.extend(faults)

    def add_rule(self, predicate: Predicate, fault: Fault) -> None:
        """Apply ``fault`` to every /v1/messages request whose JSON body satisfies ``predicate``."""
        with self._lock:
            self._rules.append((predicate, fault))

    def plant(self, plant: Plant, *, when: Predicate | None = None, times: int = 1) -> None:
        """Make drafts state what no source holds: every request matching ``when``, else the next ``times``."""
        with self._lock:
            if when is not None:
                self._plant_rules.append((when, plant))
            else:
                self._plants.extend([plant] * times)

    def clear_cache(self) -> None:
        """Forget every cached prompt prefix."""
        with self._lock:
            self._cache.clear()

    def reset(self) -> None:
        """Clear faults, rules, recorded requests, counters, overrides and cache; drop delayed answers."""
        with self._lock:
            self._faults.clear()
            self.count_tokens_faults.clear()
            self._rules.clear()
            self._plants.clear()
            self._plant_rules.clear()
            self._requests.clear()
            self._cache.clear()
            self._message_calls = 0
            self._answers.clear()
            self._count_tokens_calls = 0
            self._usage_totals = self._zero_totals()
            self.usage_overrides = {}
            old, self._cancel = self._cancel, threading.Event()
        old.set()

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    @property
    def requests(self) -> list[JSONDict]:
        """Snapshot of received API requests: method, path, query, headers (secrets masked), json."""
        with self._lock:
            return list(self._requests)

    @property
    def message_calls(self) -> int:
        """POST /v1/messages requests answered with 200 (i.e. billed)."""
        with self._lock:
            return self._message_calls

    @property
    def answers(self) -> list[JSONDict]:
        """Each billed (200) Message answer as sent: its ``id``, ``request_id`` and ``usage`` (to match charges)."""
        with self._lock:
            return list(self._answers)

    @property
    def count_tokens_calls(self) -> int:
        with self._lock:
            return self._count_tokens_calls

    @property
    def usage_totals(self) -> dict[str, int]:
        """Sum of the usage buckets over every billed (200) /v1/messages answer."""
        with self._lock:
            return dict(self._usage_totals)

    def stats(self) -> JSONDict:
        with self._lock:
            return {
                "message_calls": self._message_calls,
                "count_tokens_calls": self._count_tokens_calls,
                "requests": len(self._requests),
                "pending_faults": len(self._faults),
                "usage_totals": dict(self._usage_totals),
            }

    @staticmethod
    def _zero_totals() -> dict[str, int]:
        return {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    # -- request handling
    def _handle(self, handler: _Handler) -> _Reply | None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        self._arrived.at = time.monotonic()  # `latency` runs from here, whatever the fake's own work takes
        parts = urlsplit(handler.path)
        path = parts.path.rstrip("/") or "/"
        method = handler.command
        body: Any = None
        parse_error = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                parse_error = True

        if path.startswith("/_fake/"):
            return self._control(method, path, body)

        headers = {k.lower(): v for k, v in handler.headers.items()}
        for secret in ("x-api-key", "authorization"):
            if secret in headers:
                headers[secret] = _mask_secret(headers[secret])
        with self._lock:
            self._requests.append(
                {"method": method, "path": path, "query": parts.query, "headers": headers, "json": body}
            )
            cancel = self._cancel

        if path.startswith("/v1/messages/batches"):  # the Message Batches endpoints: batches/claude_standin_batches.py
            from batches.claude_standin_batches import route as batches_route
            return batches_route(self, handler, method, path, parts.query, body, cancel)
        routes = {("POST", "/v1/messages"): self._messages, ("POST", "/v1/messages/count_tokens"): self._count_tokens}
        route = routes.get((method, path))
        if route is None:
            return _error_reply(404, "Not Found")
        if not handler.headers.get("x-api-key") and not handler.headers.get("authorization"):
            return _error_reply(401, "x-api-key header is required")
        if not handler.headers.get("anthropic-version"):
            return _error_reply(400, "anthropic-version: header is required")
        if parse_error or not isinstance(body, dict):
            return _error_reply(400, "There was an error parsing the body")
        return route(body, cancel)

    def _take_fault(self, body: JSONDict) -> Fault | None:
        with self._lock:
            rules = list(self._rules)
        for predicate, fault in rules:
            try:
                matched = bool(predicate(body))
            except Exception:
                matched = False
            if matched:
                return fault
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _messages(self, body: JSONDict, cancel: threading.Event) -> _Reply | None:
        fault = self._take_fault(body)
        if fault is not None and fault.kind == "error":
            assert fault.status is not None
            message = fault.message or DEFAULT_ERROR_MESSAGES.get(fault.status, "Internal server error")
            if fault.status == 404 and fault.message is None and isinstance(body.get("model"), str):
                message = f"model: {body['model']}"
            return _error_reply(
                fault.status, message.replace("{model}", str(body.get("model"))), fault.error_type, fault.retry_after
            )
        if fault is not None and fault.kind == "disconnect":
            return None
        if fault is not None and fault.kind == "timeout" and cancel.wait(fault.seconds):
            return None
        try:
            _validate_messages_body(body, need_max_tokens=True, max_output_tokens=self.max_output_tokens)
        except _RequestError as err:
            return _error_reply(err.status, err.message)

        if fault is not None and fault.kind == "unreadable":
            content_type, raw = UNREADABLE_BODIES[fault.message or "html"]
            with self._lock:
                self._message_calls += 1
            return _Reply(200, raw, {"content-type": content_type, "request-id": _request_id()})
        usage = self._input_usage(body)
        plant = self._take_plant(body)
        content, stop_reason, output_tokens = self._generate(body, fault.kind if fault else None, plant)
        if fault is not None and fault.kind == "stop_reason":
            stop_reason = fault.message or "refusal"
        usage["output_tokens"] = output_tokens
        usage.update(self.usage_overrides)
        if fault is not None and fault.kind == "over_usage":
            usage["input_tokens"] = int(usage["input_tokens"] * fault.seconds)
        if "cache_creation_input_tokens" in self.usage_overrides and "cache_creation" not in self.usage_overrides:
            usage["cache_creation"] = {
                "ephemeral_5m_input_tokens": usage["cache_creation_input_tokens"],
                "ephemeral_1h_input_tokens": 0,
            }
        message = {
            "model": body["model"],
            "id": _random_id("msg_01", 22),
            "type": "message",
            "role": "assistant",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if fault is not None and fault.kind == "no_usage":
            del message["usage"]
        if self.latency > 0 and cancel.wait(max(0.0, self._arrived.at + self.latency - time.monotonic())):
            return None
        reply = self._stream_reply(message) if body.get("stream") is True else _json_reply(200, message)
        with self._lock:
            if cancel.is_set():
                return None
            self._message_calls += 1
            self._answers.append({"id": message["id"], "request_id": reply.headers["request-id"], "usage": usage})
            for key in self._usage_totals:
                self._usage_totals[key] += int(usage.get(key) or 0)
        return reply

    def _count_tokens(self, body: JSONDict, cancel: threading.Event) -> _Reply | None:
        with self._lock:
            fault = self.count_tokens_faults.popleft() if self.count_tokens_faults else None
        if fault is not None and fault.kind == "error":
            assert fault.status is not None
            message = fault.message or DEFAULT_ERROR_MESSAGES.get(fault.status, "Internal server error")
            return _error_reply(fault.status, message.replace("{model}", str(body.get("model"))),
                                fault.error_type, fault.retry_after)
        if fault is not None and fault.kind == "disconnect":
            return None
        if fault is not None and fault.kind == "timeout" and cancel.wait(fault.seconds):
            return None
        try:
            _validate_messages_body(body, need_max_tokens=False, max_output_tokens=self.max_output_tokens)
        except _RequestError as err:
            return _error_reply(err.status, err.message)
        with self._lock:
            self._count_tokens_calls += 1
        return _json_reply(200, {"input_tokens": request_input_tokens(body)})

    def _input_usage(self, body: JSONDict) -> JSONDict:
        """Split the prompt into uncached input, cache write and cache read, updating the cache."""
        segments = _segments(body)
        total = sum(seg.tokens for seg in segments)
        running = hashlib.sha256(str(body.get("model")).encode("utf-8"))
        cumulative = 0
        prefixes: list[tuple[int, str, str]] = []  # (tokens, hash, ttl) at each breakpoint
        for seg in segments:
            running.update(seg.text.encode("utf-8"))
            running.update(b"\x00")
            cumulative += seg.tokens
            if seg.cache_ttl:
                prefixes.append((cumulative, running.hexdigest(), seg.cache_ttl))
        eligible = [p for p in prefixes if p[0] >= self.min_cacheable_tokens]
        read = creation = 0
        ttl = "5m"
        if eligible:
            now = time.monotonic()
            with self._lock:
                for tokens, digest, _ in reversed(eligible):
                    if self._cache.get(digest, 0.0) > now:
                        read = tokens
                        break
                last_tokens, _, ttl = eligible[-1]
                creation = last_tokens - read
                for _tokens, digest, entry_ttl in eligible:
                    # A hit refreshes the entry's lifetime, as the real cache does.
                    self._cache[digest] = now + CACHE_TTL_SECONDS[entry_ttl]
        return {
            "input_tokens": total - read - creation,
            "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": creation if ttl == "5m" else 0,
                "ephemeral_1h_input_tokens": creation if ttl == "1h" else 0,
            },
            "output_tokens": 0,
            "service_tier": "standard",
            "inference_geo": "not_available",
        }

    def _take_plant(self, body: JSONDict) -> Plant | None:
        with self._lock:
            rules = list(self._plant_rules)
        for predicate, plant in rules:
            try:
                if predicate(body):
                    return plant
            except Exception:
                continue
        with self._lock:
            return self._plants.popleft() if self._plants else None

    def _generate(
        self, body: JSONDict, mode: str | None, plant: Plant | None = None
    ) -> tuple[list[JSONDict], str, int]:
        writer = _Writer(body, plant=plant)
        max_tokens = int(body["max_tokens"])
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("input_schema"), dict)]
        choice = body.get("tool_choice") if isinstance(body.get("tool_choice"), dict) else {}
        if tools and mode != "text_only" and choice.get("type") != "none":
            tool = next((t for t in tools if t["name"] == choice.get("name")), tools[0])
            schema = tool["input_schema"]
            tool_input = writer.value_for(tool["name"], schema, schema)
            if not isinstance(tool_input, dict):
                tool_input = {}
            if "sources_used" in tool_input:
                tool_input["sources_used"] = list(dict.fromkeys(writer.cited))
            if mode == "malformed":
                tool_input = _malform(tool_input, schema)
            if mode == "nul_body":
                tool_input = {k: f"{v}\x00 and\x00more" if isinstance(v, str) else v for k, v in tool_input.items()}
            stop_reason = "tool_use"
            output_tokens = estimate_tokens(json.dumps(tool_input, ensure_ascii=False))
            if output_tokens > max_tokens:
                # Cut off mid-call like the real model: only the fields finished within max_tokens survive.
                tool_input = _truncate_input(tool_input, max_tokens)
                stop_reason, output_tokens = "max_tokens", max_tokens
            block = {
                "type": "tool_use",
                "id": _random_id("toolu_01", 22),
                "name": tool["name"],
                "input": tool_input,
                "caller": {"type": "direct"},
            }
            return [block], stop_reason, output_tokens
        text = writer.text_reply()
        if mode == "malformed":
            text = '{"subject": "' + writer.title()  # unterminated JSON, as a cut-off model reply would be
        stop_reason = "end_turn"
        output_tokens = estimate_tokens(text)
        if output_tokens > max_tokens:
            text, stop_reason, output_tokens = text[: max_tokens * 4], "max_tokens", max_tokens
        return [{"type": "text", "text": text}], stop_reason, output_tokens

    def _stream_reply(self, message: JSONDict) -> _Reply:
        usage = message["usage"]
        start_usage = {**usage, "output_tokens": 1}
        events: list[JSONDict] = [
            {"type": "message_start", "message": {**message, "content": [], "stop_reason": None, "usage": start_usage}},
        ]
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
                events.append({"type": "content_block_start", "index": index, "content_block": start})
                events.append({"type": "ping"})
                deltas = [{"type": "text_delta", "text": part} for part in _chunks(block["text"])]
            else:
                events.append(
                    {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}}
                )
                raw = json.dumps(block["input"], ensure_ascii=False)
                deltas = [{"type": "input_json_delta", "partial_json": part} for part in _chunks(raw)]
            events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
            events.append({"type": "content_block_stop", "index": index})
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            }
        )
        events.append({"type": "message_stop"})
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "request-id": _request_id(),
            "cache-control": "no-cache",
        }
        return _Reply(200, _sse(events), headers)

    def _control(self, method: str, path: str, body: Any) -> _Reply:
        """Test-only endpoints, so a server in another process can be inspected and steered."""
        if method == "GET" and path == "/_fake/stats":
            return _json_reply(200, self.stats())
        if method == "GET" and path == "/_fake/requests":
            return _json_reply(200, self.requests)
        if method == "POST" and path == "/_fake/reset":
            self.reset()
            return _json_reply(200, self.stats())
        if method == "POST" and path == "/_fake/faults":
            items = body if isinstance(body, list) else [body]
            try:
                faults = [Fault.from_dict(item) for item in items if isinstance(item, dict)]
            except (TypeError, ValueError) as err:
                return _error_reply(400, str(err))
            self.enqueue(*faults)
            return _json_reply(200, self.stats())
        if method == "POST" and path == "/_fake/config" and isinstance(body, dict):
            if "latency" in body:
                self.latency = float(body["latency"])
            if "min_cacheable_tokens" in body:
                self.min_cacheable_tokens = int(body["min_cacheable_tokens"])
            if "usage_overrides" in body and isinstance(body["usage_overrides"], dict):
                self.usage_overrides = dict(body["usage_overrides"])
            if isinstance(body.get("plants"), list):
                for item in body["plants"]:
                    if isinstance(item, dict):
                        self.plant(Plant.from_dict(item))
            return _json_reply(200, self.stats())
        return _error_reply(404, "Not Found")


class RemoteFakeAnthropic:
    """Client for the ``/_fake/`` control endpoints of a fake running in another process."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    def stats(self) -> JSONDict:
        return self._call("GET", "/_fake/stats")

    def requests(self) -> list[JSONDict]:
        return self._call("GET", "/_fake/requests")

    def reset(self) -> JSONDict:
        return self._call("POST", "/_fake/reset", {})

    def enqueue(self, *faults: Fault) -> JSONDict:
        return self._call("POST", "/_fake/faults", [asdict(f) for f in faults])

    def configure(self, **settings: Any) -> JSONDict:
        """Set ``latency``, ``min_cacheable_tokens`` and/or ``usage_overrides``."""
        return self._call("POST", "/_fake/config", settings)


def main(argv: list[str] | None = None) -> int:
    """Run the fake in the foreground until interrupted."""
    parser = argparse.ArgumentParser(description="Fake Anthropic Messages API for tests and benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds from each successful /v1/messages request's arrival to its answer")
    parser.add_argument("--min-cacheable-tokens", type=int, default=1024)
    args = parser.parse_args(argv)

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    server = FakeAnthropicServer(
        latency=args.latency, min_cacheable_tokens=args.min_cacheable_tokens, host=args.host, port=args.port
    ).start()
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
