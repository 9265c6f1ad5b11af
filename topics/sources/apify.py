"""Apify: runs a configurable actor (a TikTok or X search scraper, say), waits for it, and maps its dataset items.

Uses the official apify-client. One run is one paid call: the run's cap (`maxTotalChargeUsd`, APIFY_MAX_CHARGE_USD)
is reserved before it starts and passed to Apify, which enforces it for pay-per-event actors; `maxItems` bounds
pay-per-result actors. The run's `usageTotalUsd` settles the reservation.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

import impit
import pydantic
from apify_client import ApifyClient
from apify_client.errors import ApifyApiError, InvalidResponseBodyError

from topics.sources.base import (
    BudgetRefused,
    Candidate,
    SourceError,
    SpendMeter,
    budget_refused_error,
    clip,
    error_for_status,
    json_safe,
    malformed_json_error,
    number,
    parse_datetime,
    redact,
    status_costs_nothing,
    transport_problem,
    unexpected_shape_error,
    unreachable_error,
    usd,
)

log = logging.getLogger(__name__)

LABEL = "Apify"
DEFAULT_BASE_URL = "https://api.apify.com"
DEFAULT_ACTOR_ID = "clockworks/tiktok-scraper"
DEFAULT_MAX_CHARGE_USD = "0.50"
# Input and field mapping for the default actor; another actor brings its own (APIFY_ACTOR_INPUT, APIFY_FIELD_MAP).
DEFAULT_ACTOR_INPUT: dict[str, Any] = {
    "searchQueries": ["shopify store owner", "amazon fba seller", "ecommerce business tips"],
    "searchSection": "/video",
    "resultsPerPage": 10,
}
DEFAULT_FIELD_MAP: dict[str, Any] = {
    "external_id": "id",
    "title": "text",
    "summary": "text",
    "url": "webVideoUrl",
    "published_at": "createTimeISO",
    "engagement": {"views": "playCount", "likes": "diggCount", "comments": "commentCount", "shares": "shareCount"},
}
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "TIMED-OUT", "ABORTED"})


class ApifySource:
    """Items scraped by one Apify actor run, mapped to candidates through a small field mapping.

    `field_map` names, for each Candidate field, the item field to read (dotted paths reach into nested objects):
    `external_id`, `title`, `summary`, `url`, `published_at`, and `engagement` as {name: field}.
    """

    name = "apify"
    paid = True

    def __init__(
        self,
        *,
        token: str = "",
        base_url: str = DEFAULT_BASE_URL,
        actor_id: str = DEFAULT_ACTOR_ID,
        actor_input: Mapping[str, Any] | None = None,
        field_map: Mapping[str, Any] | None = None,
        max_charge_usd: Decimal | str = DEFAULT_MAX_CHARGE_USD,
        wait_seconds: int = 300,
        max_retries: int = 3,
        retry_delay: timedelta = timedelta(milliseconds=500),
    ) -> None:
        self.token = token
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.actor_id = actor_id
        is_default_actor = actor_id == DEFAULT_ACTOR_ID
        if actor_input is None:
            actor_input = DEFAULT_ACTOR_INPUT if is_default_actor else {}
        self.actor_input = dict(actor_input)
        self.field_map = dict(field_map if field_map is not None else DEFAULT_FIELD_MAP)
        self.max_charge_usd = Decimal(str(max_charge_usd))
        self.wait_seconds = wait_seconds
        self.max_retries = max_retries
        self.retry_delay = retry_delay

    @classmethod
    def from_settings(cls, settings: Any) -> ApifySource:
        """Build from Django settings (APIFY_*), with defaults for anything unset."""
        return cls(
            token=getattr(settings, "APIFY_TOKEN", "") or "",
            base_url=getattr(settings, "APIFY_BASE_URL", "") or DEFAULT_BASE_URL,
            actor_id=getattr(settings, "APIFY_ACTOR_ID", "") or DEFAULT_ACTOR_ID,
            actor_input=getattr(settings, "APIFY_ACTOR_INPUT", None) or None,
            field_map=getattr(settings, "APIFY_FIELD_MAP", None) or None,
            max_charge_usd=str(getattr(settings, "APIFY_MAX_CHARGE_USD", "") or DEFAULT_MAX_CHARGE_USD),
            wait_seconds=int(getattr(settings, "APIFY_WAIT_SECONDS", 300)),
        )

    def is_configured(self) -> bool:
        return bool(self.token and self.actor_id)

    def describe(self) -> str:
        return f"Apify: items scraped by the {self.actor_id} actor (at most ${self.max_charge_usd} a run)"

    def fetch(self, *, limit: int, meter: SpendMeter, run_token: str | None = None) -> list[Candidate]:
        """Run the actor once (at most `limit` items), wait for it, and map its dataset items."""
        token = run_token or uuid.uuid4().hex[:12]
        try:
            hold = meter.reserve(
                provider=self.name,
                description=f"Apify actor run: {self.actor_id}",
                worst_case_usd=self.max_charge_usd,
                idempotency_key=f"discover:{self.name}:{token}:{self.actor_id}",
            )
        except BudgetRefused as exc:
            raise budget_refused_error(label=LABEL, exc=exc, gathered=[]) from exc

        # Starting a run is never retried by the client: a lost answer to a retried start would mean two paid runs
        # on one reservation. Reading the run and its dataset is free and safe to retry.
        starter = ApifyClient(self.token, api_url=self.base_url, max_retries=0)
        reader = ApifyClient(
            self.token, api_url=self.base_url, max_retries=self.max_retries, min_delay_between_retries=self.retry_delay
        )
        try:
            run = starter.actor(self.actor_id).start(
                run_input=self.actor_input, max_total_charge_usd=self.max_charge_usd, max_items=limit
            )
        except (ApifyApiError, impit.ConnectError, impit.ConnectTimeout) as exc:
            if not isinstance(exc, ApifyApiError) or status_costs_nothing(exc.status_code):
                hold.release()  # the run never started
            raise self._translate(exc, what=f"starting the {self.actor_id} actor") from exc
        except (impit.HTTPError, InvalidResponseBodyError, ValueError) as exc:
            # The start may have gone through: keep the reservation.
            raise self._translate(exc, what=f"starting the {self.actor_id} actor") from exc

        what = f"the {self.actor_id} run {run.id}"
        try:
            finished = reader.run(run.id).wait_for_finish(wait_duration=timedelta(seconds=self.wait_seconds))
        except (ApifyApiError, impit.HTTPError, ValueError) as exc:
            raise self._translate(exc, what=what) from exc
        if finished is None:
            raise SourceError(f"{LABEL}: {what} disappeared while we waited for it")
        status = str(getattr(finished.status, "value", finished.status))
        if status not in TERMINAL_STATUSES:
            self._abort(reader, run.id)
            # Still running means still spending; its cost is unknown, so the reservation stays.
            raise SourceError(f"{LABEL}: {what} did not finish within {self.wait_seconds} s and was aborted")
        cost = usd(finished.usage_total_usd)
        if cost is not None:
            hold.settle(cost)
        if status != "SUCCEEDED":
            raise SourceError(f"{LABEL}: {what} ended {status}")

        try:
            page = reader.dataset(finished.default_dataset_id).list_items(limit=limit, clean=True)
        except (ApifyApiError, impit.HTTPError, KeyError, ValueError) as exc:
            raise self._translate(exc, what=f"the dataset of {what}") from exc
        candidates = [c for c in (self._candidate(item, run_id=run.id) for item in page.items) if c is not None]
        return candidates[:limit]

    def _abort(self, reader: ApifyClient, run_id: str) -> None:
        try:
            reader.run(run_id).abort()
        except (ApifyApiError, impit.HTTPError, ValueError) as exc:
            # Best effort: the run's own timeout and max charge still bound what it can spend.
            log.warning("Apify: could not abort run %s: %s", run_id, redact(str(exc), (self.token,)))

    def _translate(self, exc: Exception, *, what: str) -> SourceError:
        """An apify-client/impit failure as a SourceError naming what failed, with no secret in it."""
        secrets = (self.token,)
        if isinstance(exc, ApifyApiError):
            if exc.status_code == 404 and what.startswith("starting"):
                return SourceError(
                    f"{LABEL}: actor {self.actor_id!r} was not found (HTTP 404); check APIFY_ACTOR_ID", permanent=True
                )
            return error_for_status(
                label=LABEL,
                status=exc.status_code,
                detail=f"{exc.message or ''} ({what})",
                key_setting="APIFY_TOKEN",
                secrets=secrets,
            )
        if isinstance(exc, InvalidResponseBodyError):
            return malformed_json_error(label=LABEL, what=f"the answer while {what}")
        if isinstance(exc, impit.HTTPError):
            host = self.base_url.split("://", 1)[-1]
            return unreachable_error(label=LABEL, host=host, problem=f"{transport_problem(exc)} while {what}")
        problem = clip(redact(_first_line(exc), secrets), 160)
        if isinstance(exc, pydantic.ValidationError):
            problem = f"{exc.error_count()} field errors, e.g. {clip(redact(_first_line(exc, 1), secrets), 120)}"
        return unexpected_shape_error(label=LABEL, what=f"the answer while {what}", problem=problem)

    def item_text(self, item: Mapping[str, Any]) -> tuple[str, str, str]:
        """An item's title, text and URL as the field map names them (every text field it maps, once each)."""
        fields = self.field_map
        texts = [_text(_pick(item, fields.get(name))) for name in ("title", "summary", "text")]
        text = "\n\n".join(dict.fromkeys(t for t in texts if t))
        return clip(texts[0].splitlines()[0] if texts[0] else "", 200), text, _text(_pick(item, fields.get("url")))

    def _candidate(self, item: Any, *, run_id: str) -> Candidate | None:
        if not isinstance(item, dict):
            return None
        fields = self.field_map
        title = _text(_pick(item, fields.get("title")))
        url = _text(_pick(item, fields.get("url")))
        external_id = _text(_pick(item, fields.get("external_id"))) or url
        if not title or not external_id:
            return None
        engagement: dict[str, float] = {}
        for name, path in (fields.get("engagement") or {}).items():
            value = number(_pick(item, path))
            if value is not None:
                engagement[name] = value
        return Candidate(
            source=self.name,
            external_id=clip(external_id, 300),
            title=clip(title.splitlines()[0], 200),
            summary=clip(_text(_pick(item, fields.get("summary"))), 600),
            url=url,
            engagement=engagement,
            published_at=parse_datetime(_pick(item, fields.get("published_at"))),
            raw=json_safe({**item, "_actor": self.actor_id, "_run": run_id}),
        )


def _pick(item: Mapping[str, Any], path: str | None) -> Any:
    """The value at a dotted path ("authorMeta.name") in an item, or None."""
    if not path:
        return None
    value: Any = item
    for part in str(path).split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _text(value: Any) -> str:
    if value is None or isinstance(value, (dict, list)):
        return ""
    return str(value).strip()


def _first_line(exc: Exception, index: int = 0) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[index] if len(lines) > index else type(exc).__name__
