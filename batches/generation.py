"""Draft one newsletter with Claude, inside the budget: claim with a lease, reserve, call, validate, settle.

What an answer costs is real money, so once an answer has arrived it is never thrown away: its draft and its
settlement are written in one transaction, retried across a database blip, and spooled to disk (batches.spool)
if the database stays away longer; the sweeper replays the spool.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import anthropic
import httpx2
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from topics import usage as topic_usage
from topics.material import Material

from . import grounding, ledger, spool
from .grounding import gather_for_newsletter
from .models import Batch, CostLedgerEntry, ModelPrice, Newsletter
from .planning import topic_message
from .pricing import PriceMissing, Usage, cost_of, price_for, worst_case_cost
from .prompts import PREVIEW_MAX, SUBJECT_MAX, TOOL_NAME, build_request
from .versions import TEXT_FIELDS, keep_version

logger = logging.getLogger("newsroom.generation")

# Statuses after which retrying may succeed: timeouts, conflicts, rate limits, server errors, overload.
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
MIN_BODY_CHARS = 200
BODY_MAX_CHARS = 60_000  # far above a 700-word issue; a runaway answer is cut here with a clear error
# PostgreSQL refuses NUL in text; other C0 controls (tab and newline aside) are never wanted in a draft.
_REFUSED_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# Leave room after the last call for writing the answer (with its retries) before the lease runs out.
WRITE_MARGIN_SECONDS = 5.0


class GenerationFailed(Exception):
    """The item cannot be drafted; `reason` is written for an editor."""

    def __init__(self, reason: str, *, permanent: bool):
        self.reason = reason
        self.permanent = permanent
        super().__init__(reason)


class InvalidAnswer(Exception):
    """The model answered, but not with what was asked for."""


class UnreadableAnswer(Exception):
    """A 200 whose body is not the API's JSON (an HTML page from a proxy, an empty body, bytes that are not UTF-8)."""


@dataclass(frozen=True)
class Answer:
    message: Any
    entry_id: int
    usage: Usage | None  # None: the answer carried no usage
    cost_usd: Decimal


@dataclass(frozen=True)
class Draft:
    subject: str
    preview_text: str
    body_markdown: str
    sources_used: tuple[int, ...] = ()  # the source numbers the answer says it cited (checked by grounding)


_clients: dict[tuple, anthropic.Anthropic] = {}
_clients_lock = threading.Lock()


def make_client() -> anthropic.Anthropic:
    """The process's SDK client (one per worker process, so its connection pool is reused across calls).

    Retries are ours, not the SDK's: each HTTP attempt gets its own ledger reservation, so an attempt whose
    outcome is unknown (a timeout) keeps its money reserved while the next attempt reserves anew. The client is
    keyed by the process id too: a pool inherited through fork would share sockets with the parent.
    """
    key = (os.getpid(), settings.ANTHROPIC_API_KEY, settings.ANTHROPIC_BASE_URL, settings.ANTHROPIC_TIMEOUT_SECONDS)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = anthropic.Anthropic(
                api_key=settings.ANTHROPIC_API_KEY or None,
                base_url=settings.ANTHROPIC_BASE_URL or None,
                max_retries=0,
                timeout=settings.ANTHROPIC_TIMEOUT_SECONDS,
            )
            _clients.clear()
            _clients[key] = client
    return client


def clean_text(value: str) -> str:
    """Model output as the database will take it: no NUL or other control characters, no lone surrogates."""
    return _REFUSED_CHARACTERS.sub("", value)


def parse_draft(message: Any) -> Draft:
    """The draft in a Messages API answer, or InvalidAnswer saying what is wrong with it."""
    blocks = [b for b in (message.content or []) if getattr(b, "type", None) == "tool_use"]
    block = next((b for b in blocks if b.name == TOOL_NAME), None)
    if block is None:
        kinds = ", ".join(getattr(b, "type", "?") for b in message.content or []) or "nothing"
        raise InvalidAnswer(f"the model did not call {TOOL_NAME} (it answered with {kinds}; stop reason "
                            f"{message.stop_reason})")
    data = block.input if isinstance(block.input, dict) else {}
    problems = []
    for name in ("subject", "preview_text", "body_markdown"):
        value = data.get(name)
        if not isinstance(value, str) or not clean_text(value).strip():
            problems.append(f"{name} is missing or empty")
    if problems:
        raise InvalidAnswer("; ".join(problems))
    subject, preview, body = (clean_text(data[name]).strip() for name in ("subject", "preview_text", "body_markdown"))
    if len(subject) > SUBJECT_MAX:
        problems.append(f"subject is {len(subject)} characters (at most {SUBJECT_MAX})")
    if len(preview) > PREVIEW_MAX:
        problems.append(f"preview_text is {len(preview)} characters (at most {PREVIEW_MAX})")
    if len(body) < MIN_BODY_CHARS:
        problems.append(f"body_markdown is only {len(body)} characters")
    if len(body) > BODY_MAX_CHARS:
        problems.append(f"body_markdown is {len(body):,} characters (at most {BODY_MAX_CHARS:,})")
    if message.stop_reason == "max_tokens":
        problems.append("the answer was cut off at max_tokens")
    elif message.stop_reason not in COMPLETE_STOP_REASONS:
        # a refusal, the context window reached: the model stopped before it had finished, whatever it sent
        problems.append(f"the answer was cut off ({message.stop_reason})")
    if problems:
        raise InvalidAnswer("; ".join(problems))
    used = data.get("sources_used") if isinstance(data.get("sources_used"), list) else []
    sources_used = tuple(n for n in used if isinstance(n, int) and not isinstance(n, bool))
    return Draft(subject=subject, preview_text=preview, body_markdown=body, sources_used=sources_used)


def _retry_delay(*, attempt: int, error: Exception | None) -> float:
    base = settings.ANTHROPIC_RETRY_BASE_SECONDS
    delay = min(base * (2**attempt), settings.ANTHROPIC_RETRY_MAX_SECONDS)
    response = getattr(error, "response", None)
    retry_after = response.headers.get("retry-after") if response is not None else None
    if retry_after:
        try:
            delay = max(delay, min(float(retry_after), settings.ANTHROPIC_RETRY_MAX_SECONDS))
        except ValueError:
            pass  # an HTTP date; our own backoff is close enough
    return delay


# Why a model stops when it has finished: its tool call (the answer asked for) or its turn.
COMPLETE_STOP_REASONS = ("tool_use", "end_turn")


def _describe(error: Exception | None) -> str:
    if isinstance(error, UnreadableAnswer):
        return f"the Anthropic API answered with something that is not a readable answer ({error})"
    if isinstance(error, anthropic.APIStatusError):
        body = error.body if isinstance(error.body, dict) else {}
        detail = (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else None
        kind = (body.get("error") or {}).get("type") if isinstance(body.get("error"), dict) else None
        return f"Anthropic API answered {error.status_code} {kind or ''}: {detail or error.message}".replace("  ", " ")
    if isinstance(error, anthropic.APITimeoutError):
        return f"Anthropic API did not answer within {settings.ANTHROPIC_TIMEOUT_SECONDS:g} s"
    if isinstance(error, anthropic.APIConnectionError):
        return f"could not reach the Anthropic API ({error.__cause__ or error})"
    if error is None:
        return "no attempt could start before the item's lease ran out"
    return f"{error.__class__.__name__}: {error}"


def _is_transient(error: Exception) -> bool:
    if isinstance(error, anthropic.APIStatusError):
        return error.status_code in TRANSIENT_STATUSES or error.status_code >= 500
    return isinstance(error, (anthropic.APIConnectionError, UnreadableAnswer))  # includes timeouts


def lease_duration() -> datetime.timedelta:
    return datetime.timedelta(seconds=settings.ITEM_LEASE_SECONDS)


def claim(*, newsletter_id: int, token: str) -> Newsletter | None:
    """Take the item for this task run, or None when another run holds it, it is finished, or it belongs to an
    economy batch (drafted inside its Message Batch, never by a call of its own).

    An item `generating` is held by a lease: nobody takes it back, not even a redelivery of the same task,
    until the lease has expired, so a slow call still running elsewhere is never drafted a second time.
    """
    now = timezone.now()
    claimable = Q(status=Newsletter.Status.PENDING) | Q(status=Newsletter.Status.GENERATING) & (
        Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True, claimed_at__lt=now - lease_duration())
    )
    # EXISTS, not a join: the item's own conditions stay on the row the UPDATE locks, so PostgreSQL checks them
    # again on the newest version of the row when two runs race for it.
    now_batch = Exists(Batch.objects.filter(pk=OuterRef("batch_id"), delivery=Batch.Delivery.NOW))
    changed = Newsletter.objects.filter(claimable, now_batch, pk=newsletter_id).update(
        status=Newsletter.Status.GENERATING, claim_token=token, claimed_at=now,
        lease_expires_at=now + lease_duration(), attempts=F("attempts") + 1,
    )
    if not changed:
        return None
    return Newsletter.objects.select_related("batch", "topic__category").get(pk=newsletter_id)


def _finish(*, newsletter: Newsletter, token: str, status: str, error: str = "") -> bool:
    """End the item this run holds without a draft. False when the item is no longer this run's."""
    changed = Newsletter.objects.filter(
        pk=newsletter.pk, status=Newsletter.Status.GENERATING, claim_token=token
    ).update(status=status, error=error, lease_expires_at=None, cost_usd=ledger.newsletter_spent(newsletter.pk))
    newsletter.status, newsletter.error = status, error
    topic_usage.mark_free(topic_ids=[newsletter.topic_id] if changed else [])
    return bool(changed)


def write_answer(record: dict[str, Any]) -> str:
    """Write a paid answer: settle its reservation and save its draft (or its failure) in one transaction.

    Idempotent, so a replay from the spool after a partial outage changes nothing twice. The draft is saved when
    this run still holds the item, or when the item has no draft yet (its lease ran out while the answer was on
    its way): what was paid for is kept. Returns the item's status afterwards.

    The item's row is locked first and the ledger's rows last: a settlement writes the entry and its process's
    tallies (and, for an overrun, the budget rows every reservation waits on), so they are held for the
    settlement and the one statement that saves the item, not through the whole draft's writing.
    """
    usage = Usage(**record["usage"]) if record["usage"] is not None else None

    def settle() -> None:
        ledger.settle(entry_id=record["entry_id"], actual_usd=Decimal(record["actual_usd"]), usage=usage,
                      request_id=record["request_id"], usage_missing=usage is None)

    with transaction.atomic():
        item = Newsletter.objects.select_for_update().filter(pk=record["newsletter_id"]).first()
        if item is None:
            settle()
            return ""  # the item was deleted meanwhile; the charge stays on the ledger
        ours = item.status == Newsletter.Status.GENERATING and item.claim_token == record["token"]
        draft = record["draft"]
        saves_draft = draft is not None and (ours or item.status not in Newsletter.DRAFTED_STATUSES)
        if saves_draft:
            if any(getattr(item, name) for name in TEXT_FIELDS):  # as just read under the lock; a first draft has none
                keep_version(newsletter=item)  # the text this draft replaces stays viewable and restorable
            item.status, item.error = Newsletter.Status.GENERATED, ""
            item.subject, item.preview_text = draft["subject"], draft["preview_text"]
            item.body_markdown, item.model = draft["body_markdown"], record["model"]
            grounding.write_checked(newsletter=item, checked=record.get("grounding"), save=False)  # issue 9
        elif draft is None and ours:
            item.status, item.error = Newsletter.Status.FAILED, record["error"]
        elif draft is not None:
            logger.warning("item %s was drafted by another attempt; answer of ledger entry %s kept only as spend",
                           item.pk, record["entry_id"])
        item.lease_expires_at = None if item.status != Newsletter.Status.GENERATING else item.lease_expires_at
        if item.status not in Newsletter.OPEN_STATUSES:
            topic_usage.record_outcome(topic_id=item.topic_id, drafted=item.status in Newsletter.DRAFTED_STATUSES)
        settle()
        if saves_draft:
            item.generated_at = timezone.now()  # saved now, with its settlement
        # The item's cost is the sum of its ledger entries (ledger.newsletter_spent), this settlement included:
        # summed in the statement that saves the item.
        spent = CostLedgerEntry.objects.filter(newsletter_id=OuterRef("pk")).order_by().values("newsletter_id") \
            .annotate(total=Sum("amount_usd")).values("total")
        Newsletter.objects.filter(pk=item.pk).update(
            status=item.status, error=item.error, subject=item.subject, preview_text=item.preview_text,
            body_markdown=item.body_markdown, generated_at=item.generated_at, model=item.model,
            lease_expires_at=item.lease_expires_at, sources=item.sources,
            cost_usd=Coalesce(Subquery(spent), Value(Decimal(0)), output_field=item._meta.get_field("cost_usd")),
        )
    return item.status


def _write_answer_durably(record: dict[str, Any], *, sleep: Callable[[float], None]) -> str:
    """write_answer, retried across a database outage; spooled to disk if the database stays away."""
    deadline = time.monotonic() + settings.ANSWER_WRITE_RETRY_SECONDS
    delay = 0.25
    while True:
        try:
            return write_answer(record)
        except DatabaseError as exc:
            if not _connection_lost(exc):
                # The database is up but refuses the row (cannot happen with cleaned, capped text): the charge
                # must still land, so write it with the item failed and the reason.
                logger.exception("draft of item %s refused by the database", record["newsletter_id"])
                return write_answer({**record, "draft": None,
                                     "error": f"The draft could not be saved: {exc.__class__.__name__}: {exc}"[:500]})
            if time.monotonic() + delay > deadline:
                path = spool.write(record)
                logger.error("database unavailable: answer for item %s kept in %s until it can be written",
                             record["newsletter_id"], path)
                return Newsletter.Status.GENERATING
            sleep(delay)
            delay = min(delay * 2, 5.0)


def _connection_lost(error: DatabaseError) -> bool:
    """True when the error is about reaching the database (retry later), not about the data written."""
    from django.db import InterfaceError, OperationalError

    if not isinstance(error, (OperationalError, InterfaceError)):
        return False
    if not connection.in_atomic_block:
        connection.close()  # the next query reconnects
    return True


def replay_spool() -> int:
    """Write the answers spooled during a database outage (see batches.spool)."""
    return spool.replay(write_answer)


def _answer_record(
    *, newsletter: Newsletter, token: str, answer: Answer, material: Material | None = None
) -> dict[str, Any]:
    try:
        parsed = parse_draft(answer.message)
        draft, error = asdict(parsed), ""
    except InvalidAnswer as exc:
        parsed, draft, error = None, None, f"The model's answer was not a usable draft: {exc}."
    # grounding (issue 9): the draft's numbered sources and flags, checked against the material its prompt carried,
    # travel with the answer (a spooled answer keeps them) and are written with the draft.
    checked = grounding.checked(newsletter=newsletter, draft=parsed, material=material) \
        if parsed is not None and material is not None else None
    return {
        "entry_id": answer.entry_id,
        "newsletter_id": newsletter.pk,
        "token": token,
        "model": newsletter.batch.model,
        "actual_usd": str(answer.cost_usd),
        "usage": asdict(answer.usage) if answer.usage is not None else None,
        "request_id": getattr(answer.message, "_request_id", None) or answer.message.id or "",
        "draft": draft,
        "error": error,
        "grounding": checked,
    }


def generate_newsletter(
    *,
    newsletter_id: int,
    token: str,
    client: anthropic.Anthropic | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Draft one newsletter. Returns its status afterwards, or None when this run did not get the item."""
    newsletter = claim(newsletter_id=newsletter_id, token=token)
    if newsletter is None:
        return None
    return draft_claimed(newsletter=newsletter, token=token, client=client, sleep=sleep)


def draft_claimed(
    *,
    newsletter: Newsletter,
    token: str,
    client: anthropic.Anthropic | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Draft an item this run has claimed (see claim). Returns its status afterwards."""
    batch = newsletter.batch  # read with the item, just after the claim: its budget_stopped is current
    if batch.budget_stopped:
        _finish(newsletter=newsletter, token=token, status=Newsletter.Status.SKIPPED_BUDGET,
                error="Not drafted: the batch was stopped by its budget.")
        return newsletter.status
    # --- grounding (issue 9): the topic's source material is gathered first; failures never stop the draft ---
    material = gather_for_newsletter(newsletter=newsletter)
    try:
        answer = _call_within_budget(newsletter=newsletter, client=client or make_client(), sleep=sleep,
                                     material=material)
    except ledger.BudgetExhausted as exc:
        Batch.objects.filter(pk=batch.pk).update(budget_stopped=True)
        _finish(newsletter=newsletter, token=token, status=Newsletter.Status.SKIPPED_BUDGET, error=f"Not drafted: {exc}")
        return newsletter.status
    except GenerationFailed as exc:
        _finish(newsletter=newsletter, token=token, status=Newsletter.Status.FAILED, error=exc.reason)
        return newsletter.status
    except DatabaseError:
        # The database went away before any answer arrived: nothing was paid for beyond what the ledger holds.
        # The item keeps its lease; once it expires the sweeper puts it back in line.
        raise
    except Exception as exc:
        # Anything unforeseen (an SDK surprise) must not leave the item "generating": it fails with the reason, an
        # open reservation stays (the outcome of the call is unknown), and the error goes on up to Celery.
        _finish(newsletter=newsletter, token=token, status=Newsletter.Status.FAILED,
                error=f"Stopped by an unexpected error: {_describe(exc)}")
        raise
    record = _answer_record(newsletter=newsletter, token=token, answer=answer, material=material)
    return _write_answer_durably(record, sleep=sleep)


def reservation_tokens(counted: int) -> int:
    """Input tokens to reserve for a request count_tokens measured at `counted` (with the safety margin)."""
    margin = Decimal(counted) * settings.RESERVATION_INPUT_MARGIN
    return counted + int(margin.to_integral_value(rounding="ROUND_CEILING")) + settings.RESERVATION_INPUT_EXTRA_TOKENS


# The user message the fixed part of a request is counted with (the API refuses an empty one).
PROBE_MESSAGE = "x"
_fixed_counts: dict[tuple[str, str], int] = {}
_fixed_counts_lock = threading.Lock()


def input_tokens_bound(*, client: anthropic.Anthropic, request: dict[str, Any]) -> int | None:
    """A number of input tokens that count_tokens cannot exceed for `request`, without counting the request itself;
    None when the request is not of the one-user-message shape the bound is proven for.

    The fixed part of every draft request (the house style, the tool and its schema, the model's tool-use system
    prompt) is counted exactly, once per process and endpoint, with the one-character user message PROBE_MESSAGE:
    F = fixed + framing + tokens(PROBE_MESSAGE). The request itself then counts fixed + framing + tokens(text),
    and a token is never shorter than one byte (Claude's tokenizer, like every byte-level BPE, covers text with
    tokens of at least one UTF-8 byte each; the fake's is a token per four characters), so tokens(text) is at
    most the text's UTF-8 byte length: the bound is F plus the bytes of the text as JSON (which the escaped
    rendering of quotes, backslashes and control characters cannot exceed). It is above the exact count by
    about three quarters of the message's bytes (the prose's other three characters a token), so a reservation
    that does not fit at the bound is made again at the exact count (see _call_within_budget).
    """
    messages = request.get("messages")
    if not (isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], dict)
            and messages[0].get("role") == "user" and isinstance(messages[0].get("content"), str)):
        return None
    fixed = {k: v for k, v in request.items() if k not in ("max_tokens", "messages")}
    key = (str(getattr(client, "base_url", "")), hashlib.sha256(
        json.dumps(fixed, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest())
    counted = _fixed_counts.get(key)
    if counted is None:
        counted = client.messages.count_tokens(
            **fixed, messages=[{"role": "user", "content": PROBE_MESSAGE}]).input_tokens
        with _fixed_counts_lock:
            if len(_fixed_counts) >= 64:  # another house style or model per key: never more than a few in use
                _fixed_counts.clear()
            _fixed_counts[key] = counted
    return counted + len(json.dumps(messages[0]["content"], ensure_ascii=False).encode("utf-8"))


# Drafting reads a model's price at most this often per process (one query less per item): a price changed or
# removed in the admin reaches running workers within this long. An item keeps the price it started with.
PRICE_REUSE_SECONDS = 30.0
_prices: dict[tuple[str, datetime.date], tuple[float, ModelPrice]] = {}


def drafting_price(model: str) -> ModelPrice:
    """price_for(model) today, read again once PRICE_REUSE_SECONDS have passed; PriceMissing is never kept."""
    today = timezone.localdate()
    kept = _prices.get((model, today))
    if kept is not None and time.monotonic() - kept[0] < PRICE_REUSE_SECONDS:
        return kept[1]
    price = price_for(model, on=today)
    if len(_prices) >= 32:  # yesterday's entries and other models: never more than a few in use
        _prices.clear()
    _prices[(model, today)] = (time.monotonic(), price)
    return price


def _usable_usage(message: Any) -> Usage | None:
    usage = getattr(message, "usage", None)
    if usage is None or not isinstance(getattr(usage, "output_tokens", None), int) \
            or not isinstance(getattr(usage, "input_tokens", None), int):
        return None
    return Usage.from_api(usage)


def _call_within_budget(
    *, newsletter: Newsletter, client: anthropic.Anthropic, sleep, material: Material | None = None
) -> Answer:
    """Reserve, call and retry transient failures; the answer comes back with its reservation unsettled.

    Every attempt must be able to end before the item's lease runs out (leaving time to write the answer), so
    the sweeper never takes back an item whose call may still be running.
    """
    batch = newsletter.batch
    try:
        price = drafting_price(batch.model)
    except PriceMissing as exc:
        raise GenerationFailed(str(exc), permanent=True) from None
    max_tokens = settings.ANTHROPIC_MAX_TOKENS
    request = build_request(model=batch.model, max_tokens=max_tokens,
                            topic_message=topic_message(newsletter.topic, material))
    counting = {k: v for k, v in request.items() if k != "max_tokens"}
    timeout = settings.ANTHROPIC_TIMEOUT_SECONDS
    lease_left = (newsletter.lease_expires_at - timezone.now()).total_seconds()
    deadline = time.monotonic() + lease_left - settings.ANSWER_WRITE_RETRY_SECONDS - WRITE_MARGIN_SECONDS
    attempts = settings.ANTHROPIC_MAX_RETRIES + 1
    # The input tokens each attempt reserves for: an upper bound at first (no round trip before the call), the
    # exact count once the bound has not fitted a budget. The request does not change between attempts.
    input_tokens: int | None = None
    exact = False
    last_error: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            delay = _retry_delay(attempt=attempt - 1, error=last_error)
            if time.monotonic() + delay + timeout > deadline:
                attempts = attempt
                break
            sleep(delay)
        try:
            if input_tokens is None:
                input_tokens = input_tokens_bound(client=client, request=request)
                if input_tokens is None:
                    input_tokens, exact = client.messages.count_tokens(**counting).input_tokens, True
            if time.monotonic() + timeout > deadline:
                attempts = attempt
                break
            while True:
                try:
                    reservation = ledger.reserve(
                        idempotency_key=f"newsletter:{newsletter.pk}:attempt:{newsletter.attempts}:try:{attempt}",
                        worst_case_usd=worst_case_cost(input_tokens=reservation_tokens(input_tokens),
                                                       max_tokens=max_tokens, price=price),
                        batch_id=batch.pk,
                        newsletter_id=newsletter.pk,
                        model=batch.model,
                        description=f"Draft for topic #{newsletter.topic_id}",
                    )
                    break
                except ledger.BudgetExhausted:
                    if exact:
                        raise
                # The bound did not fit (the refused reservation left nothing behind): the request itself may fit,
                # so it is counted (counting is free) and reserved at exactly what the count says.
                input_tokens, exact = client.messages.count_tokens(**counting).input_tokens, True
        except anthropic.APIError as exc:  # counting failed; nothing was reserved for this attempt
            last_error = exc
            if _is_transient(exc):
                continue
            raise GenerationFailed(_describe(exc), permanent=True) from None
        if time.monotonic() + timeout > deadline:
            # Counting again after a refused bound took time: no call starts that could outlive the item's lease
            # (the sweeper would take the item back while the call still ran, and another worker pay for it again).
            ledger.release(entry_id=reservation.entry_id)
            attempts = attempt
            break
        try:
            message = client.messages.create(**request)
        except anthropic.APITimeoutError as exc:
            # The request may have been processed and billed: the reservation stays as the record of it.
            last_error = exc
            continue
        except anthropic.APIStatusError as exc:
            ledger.release(entry_id=reservation.entry_id)  # an error answer is not billed
            last_error = exc
            if _is_transient(exc):
                continue
            raise GenerationFailed(_describe(exc), permanent=True) from None
        except anthropic.APIConnectionError as exc:
            # Only a refused connection certainly sent nothing; a connection that dropped after the request
            # went out may have been processed and billed, so its reservation stays, as for a timeout.
            if isinstance(exc.__cause__, httpx2.ConnectError):
                ledger.release(entry_id=reservation.entry_id)
            last_error = exc
            continue
        except (ValueError, anthropic.APIResponseValidationError) as exc:
            # A 200 whose body is not JSON or not UTF-8: the call went through and may be billed, so the
            # reservation stays; another attempt may well get a readable answer.
            last_error = UnreadableAnswer(f"{exc.__class__.__name__}: {str(exc)[:120]}")
            continue
        if not isinstance(message, anthropic.types.Message):
            last_error = UnreadableAnswer(f"a {type(message).__name__} body, not a message: {str(message)[:80]!r}")
            continue
        usage = _usable_usage(message)
        cost = cost_of(usage=usage, price=price) if usage is not None else reservation.amount_usd
        return Answer(message=message, entry_id=reservation.entry_id, usage=usage, cost_usd=cost)
    raise GenerationFailed(f"Gave up after {attempts} attempts: {_describe(last_error)}", permanent=False)
