"""The one small interface every discovery source speaks, and the helpers they share.

A source fetches candidates from one outside service and normalises them into `Candidate` records. It never
touches the database: discovery de-duplicates, scores, categorises and saves. Paid sources reserve money on a
`SpendMeter` before each paid call and settle it with the actual cost afterwards.

Faults are reported as `SourceError`. `permanent=True` means retrying the same call cannot help (a rejected key,
a bad setting, a response shape we do not understand, a refused budget); `permanent=False` means it may succeed
later (the service is down, rate-limited, or sent a broken body).
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, runtime_checkable

import httpx

REDACTED = "***"


@dataclass(frozen=True)
class Candidate:
    """One normalised item found by a source: a possible newsletter topic."""

    source: str  # "reddit" | "perplexity" | "tubelab" | "apify"
    external_id: str
    title: str
    summary: str
    url: str
    engagement: dict[str, float]  # e.g. {"score": 532.0, "comments": 88.0}; {"views": 120000.0, "outlier": 7.5}
    published_at: datetime | None  # aware UTC
    raw: dict  # the raw item payload (json-serialisable)


class SourceError(Exception):
    """A source could not deliver. The message names the source and the problem and never holds a secret.

    `retry_after` is the wait (seconds) the service asked for, when it said so. `partial` holds the candidates
    gathered (and possibly paid for) before the failure, so a caller may keep them.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        partial: Sequence[Candidate] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after
        self.partial: list[Candidate] = list(partial)

    def with_partial(self, partial: Sequence[Candidate]) -> SourceError:
        """The same error carrying the candidates gathered before it."""
        return SourceError(self.message, permanent=self.permanent, retry_after=self.retry_after, partial=partial)


class BudgetRefused(Exception):
    """Raised by a SpendMeter when a paid call would cross a budget."""


class SpendHold(Protocol):
    def settle(self, actual_usd: Decimal) -> None: ...

    def release(self) -> None: ...  # the call certainly cost nothing


class SpendMeter(Protocol):
    def reserve(
        self, *, provider: str, description: str, worst_case_usd: Decimal, idempotency_key: str
    ) -> SpendHold: ...


class _NullHold:
    def settle(self, actual_usd: Decimal) -> None:
        pass

    def release(self) -> None:
        pass


class NullMeter:
    """A meter that never refuses and records nothing (tests, unpaid sources)."""

    def reserve(self, *, provider: str, description: str, worst_case_usd: Decimal, idempotency_key: str) -> SpendHold:
        return _NullHold()


@runtime_checkable
class Source(Protocol):
    name: str
    paid: bool

    def is_configured(self) -> bool: ...

    def describe(self) -> str: ...  # one line: what it adds when configured

    def fetch(self, *, limit: int, meter: SpendMeter) -> list[Candidate]: ...


def budget_refused_error(*, label: str, exc: BudgetRefused, gathered: Sequence[Candidate]) -> SourceError:
    """The error a paid source raises when the meter refuses its next call.

    We stop rather than skip: every later call of the same fetch would cross the same budget.
    """
    detail = str(exc).strip()
    message = f"{label}: stopped, the budget refused the next paid call" + (f" ({detail})" if detail else "")
    return SourceError(message, permanent=True, partial=gathered)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each secret replaced, so an error message can never leak one."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


def clip(text: str, length: int) -> str:
    """Whitespace collapsed and cut to `length` characters (with an ellipsis when cut)."""
    text = re.sub(r"\s+", " ", text or "").strip()
    return text if len(text) <= length else text[: length - 1].rstrip() + "…"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def status_costs_nothing(status: int) -> bool:
    """Whether an HTTP error status means the request was refused before any billable work.

    4xx answers (bad key, bad request, rate limit) and 503 (unavailable) are refusals. A 500, 502, 504 or 408 may
    come after the work was done, so its cost is unknown and the reservation must stay.
    """
    return (400 <= status < 500 and status != 408) or status == 503


def error_for_status(
    *,
    label: str,
    status: int,
    headers: Any = None,
    detail: str = "",
    key_setting: str = "",
    secrets: Iterable[str] = (),
) -> SourceError:
    """The SourceError for an HTTP error answer, classified permanent or transient.

    `headers` is any mapping with `.get` (for Retry-After); `detail` is the service's own error text, redacted
    and clipped before it goes into the message.
    """
    detail = clip(redact(detail, secrets), 200)
    suffix = f": {detail}" if detail else ""
    check = f"; check {key_setting}" if key_setting else ""
    if status == 401:
        return SourceError(f"{label}: the API key was rejected (HTTP 401){check}{suffix}", permanent=True)
    if status == 403:
        return SourceError(
            f"{label}: access denied (HTTP 403), the key lacks permission or the plan does not cover this API"
            f"{check}{suffix}",
            permanent=True,
        )
    if status == 402:
        return SourceError(f"{label}: the account is out of credit (HTTP 402){suffix}", permanent=True)
    if status == 429:
        retry_after = parse_retry_after(headers.get("retry-after") if headers is not None else None)
        wait = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return SourceError(f"{label}: rate-limited (HTTP 429){wait}{suffix}", retry_after=retry_after)
    if status >= 500 or status == 408:
        return SourceError(f"{label}: the service failed (HTTP {status}){suffix}")
    return SourceError(f"{label}: the request was rejected (HTTP {status}){suffix}", permanent=True)


def paid_request(
    client: httpx.Client,
    method: str,
    path: str,
    *,
    hold: SpendHold,
    label: str,
    base_url: str,
    key_setting: str,
    secrets: Sequence[str],
    **kwargs: Any,
) -> httpx.Response:
    """Send one paid request and account for its hold on failure: released when the call certainly cost
    nothing (never sent, or refused), kept when it may have been billed (sent but unanswered, server error).
    A successful response is returned with the hold still open, for the caller to settle."""
    host = httpx.URL(base_url).netloc.decode() or base_url
    try:
        response = client.request(method, path, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        hold.release()  # nothing was sent
        raise unreachable_error(label=label, host=host, problem=transport_problem(exc)) from exc
    except httpx.TransportError as exc:
        # Sent but no answer: the service may have done (and billed) the work, so the reservation stays.
        raise unreachable_error(label=label, host=host, problem=transport_problem(exc)) from exc
    if response.status_code >= 400:
        if status_costs_nothing(response.status_code):
            hold.release()
        raise error_for_status(
            label=label,
            status=response.status_code,
            headers=response.headers,
            detail=http_error_detail(response),
            key_setting=key_setting,
            secrets=secrets,
        )
    return response


def malformed_json_error(*, label: str, what: str) -> SourceError:
    # Usually a proxy or an overloaded edge answering with an HTML page: worth trying again later.
    return SourceError(f"{label}: {what} was not valid JSON")


def unexpected_shape_error(*, label: str, what: str, problem: str) -> SourceError:
    # The API changed or is not the one we think; retrying the same call would fail the same way.
    return SourceError(f"{label}: {what} had an unexpected shape ({problem})", permanent=True)


def unreachable_error(*, label: str, host: str, problem: str) -> SourceError:
    return SourceError(f"{label}: cannot reach {host} ({problem})")


def transport_problem(exc: Exception) -> str:
    """A short, secret-free description of a transport failure (for "cannot reach HOST (...)")."""
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)) or "Timeout" in type(exc).__name__:
        return "timed out"
    if isinstance(exc, (httpx.ConnectError, ConnectionError)) or "Connect" in type(exc).__name__:
        return "connection refused or failed"
    return type(exc).__name__


def http_error_detail(response: httpx.Response) -> str:
    """The service's own error text from a JSON error body ({"error": {"message"}}, {"message"}, ...), or ""."""
    try:
        payload = response.json()
    except ValueError:
        return ""
    if not isinstance(payload, dict):
        return ""
    error = payload.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or "")
    return str(payload.get("message") or error or payload.get("detail") or "")


def setting_list(value: Any) -> list[str]:
    """A list of strings from a setting given as a list or as one comma-separated string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part).strip() for part in value or () if str(part).strip()]


def parse_datetime(value: Any) -> datetime | None:
    """An aware UTC datetime from an ISO 8601 string, a date string or a Unix timestamp; None if unreadable."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = _parse_other_datetime(value.strip())
        if parsed is None:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _parse_other_datetime(text: str) -> datetime | None:
    # X/Twitter style ("Fri Nov 24 17:49:36 +0000 2023") and RFC 2822 ("Fri, 24 Nov 2023 17:49:36 +0000").
    try:
        return datetime.strptime(text, "%a %b %d %H:%M:%S %z %Y")
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None


def number(value: Any) -> float | None:
    """A float from a JSON number or a numeric string (YouTube-style "12345"); None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace(",", "").strip())
        except ValueError:
            return None
    return None


def usd(value: Any) -> Decimal | None:
    """A Decimal amount from a JSON money value. Floats go through `str` so 0.005 stays exactly 0.005."""
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return amount if amount.is_finite() and amount >= 0 else None


def json_safe(value: Any) -> Any:
    """`value` made JSON-serialisable (unknown objects become strings), for a Candidate's `raw`."""
    return json.loads(json.dumps(value, default=str))
