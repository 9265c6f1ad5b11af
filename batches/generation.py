"""Draft one newsletter with Claude, inside the budget: reserve, call, validate, settle."""
from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from topics.material import Material, gather_for_newsletter

from . import grounding, ledger
from .models import Batch, Newsletter
from .planning import topic_message
from .pricing import PriceMissing, Usage, cost_of, price_for, worst_case_cost
from .prompts import PREVIEW_MAX, SUBJECT_MAX, TOOL_NAME, build_request

logger = logging.getLogger("newsroom.generation")

# Statuses after which retrying may succeed: timeouts, conflicts, rate limits, server errors, overload.
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
MIN_BODY_CHARS = 200


class GenerationFailed(Exception):
    """The item cannot be drafted; `reason` is written for an editor."""

    def __init__(self, reason: str, *, permanent: bool):
        self.reason = reason
        self.permanent = permanent
        super().__init__(reason)


class InvalidAnswer(Exception):
    """The model answered, but not with what was asked for."""


@dataclass(frozen=True)
class Answer:
    message: Any
    entry_id: int
    usage: Usage
    cost_usd: Any


@dataclass(frozen=True)
class Draft:
    subject: str
    preview_text: str
    body_markdown: str
    sources_used: tuple[int, ...] = ()  # the source numbers the answer says it cited (checked by grounding)


def make_client() -> anthropic.Anthropic:
    # Retries are ours, not the SDK's: each HTTP attempt gets its own ledger reservation, so an attempt
    # whose outcome is unknown (a timeout) keeps its money reserved while the next attempt reserves anew.
    return anthropic.Anthropic(
        api_key=settings.ANTHROPIC_API_KEY or None,
        base_url=settings.ANTHROPIC_BASE_URL or None,
        max_retries=0,
        timeout=settings.ANTHROPIC_TIMEOUT_SECONDS,
    )


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
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{name} is missing or empty")
    if problems:
        raise InvalidAnswer("; ".join(problems))
    subject, preview, body = data["subject"].strip(), data["preview_text"].strip(), data["body_markdown"].strip()
    if len(subject) > SUBJECT_MAX:
        problems.append(f"subject is {len(subject)} characters (at most {SUBJECT_MAX})")
    if len(preview) > PREVIEW_MAX:
        problems.append(f"preview_text is {len(preview)} characters (at most {PREVIEW_MAX})")
    if len(body) < MIN_BODY_CHARS:
        problems.append(f"body_markdown is only {len(body)} characters")
    if message.stop_reason == "max_tokens":
        problems.append("the answer was cut off at max_tokens")
    if problems:
        raise InvalidAnswer("; ".join(problems))
    used = data.get("sources_used") if isinstance(data.get("sources_used"), list) else []
    sources_used = tuple(n for n in used if isinstance(n, int) and not isinstance(n, bool))
    return Draft(subject=subject, preview_text=preview, body_markdown=body, sources_used=sources_used)


def _retry_delay(*, attempt: int, error: Exception) -> float:
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


def _describe(error: Exception) -> str:
    if isinstance(error, anthropic.APIStatusError):
        body = error.body if isinstance(error.body, dict) else {}
        detail = (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else None
        kind = (body.get("error") or {}).get("type") if isinstance(body.get("error"), dict) else None
        return f"Anthropic API answered {error.status_code} {kind or ''}: {detail or error.message}".replace("  ", " ")
    if isinstance(error, anthropic.APITimeoutError):
        return f"Anthropic API did not answer within {settings.ANTHROPIC_TIMEOUT_SECONDS:g} s"
    if isinstance(error, anthropic.APIConnectionError):
        return f"could not reach the Anthropic API ({error.__cause__ or error})"
    return f"{error.__class__.__name__}: {error}"


def _is_transient(error: Exception) -> bool:
    if isinstance(error, anthropic.APIStatusError):
        return error.status_code in TRANSIENT_STATUSES or error.status_code >= 500
    return isinstance(error, anthropic.APIConnectionError)  # includes timeouts


def claim(*, newsletter_id: int, token: str) -> Newsletter | None:
    """Take the item for this task run, or None when another run owns it or it is finished.

    A redelivered task (same token) may take back an item left `generating` by a worker that died; so may
    anyone once the previous claim is older than the task time limit.
    """
    now = timezone.now()
    stale = now - datetime.timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)
    claimable = Q(status=Newsletter.Status.PENDING) | Q(
        status=Newsletter.Status.GENERATING
    ) & (Q(claim_token=token) | Q(claimed_at__lt=stale))
    changed = Newsletter.objects.filter(claimable, pk=newsletter_id).update(
        status=Newsletter.Status.GENERATING, claim_token=token, claimed_at=now, attempts=F("attempts") + 1
    )
    if not changed:
        return None
    return Newsletter.objects.select_related("batch", "topic__category").get(pk=newsletter_id)


def _finish(newsletter: Newsletter, *, status: str, error: str = "", draft: Draft | None = None) -> None:
    newsletter.status = status
    newsletter.error = error
    fields = ["status", "error", "cost_usd"]
    newsletter.cost_usd = ledger.newsletter_spent(newsletter.pk)
    if draft is not None:
        newsletter.subject, newsletter.preview_text = draft.subject, draft.preview_text
        newsletter.body_markdown, newsletter.generated_at = draft.body_markdown, timezone.now()
        fields += ["subject", "preview_text", "body_markdown", "generated_at", "model"]
    newsletter.save(update_fields=fields)


def generate_newsletter(
    *,
    newsletter_id: int,
    token: str,
    client: anthropic.Anthropic | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Draft one newsletter. Returns its final status, or None when this run did not own the item."""
    newsletter = claim(newsletter_id=newsletter_id, token=token)
    if newsletter is None:
        return None
    batch = newsletter.batch
    if Batch.objects.filter(pk=batch.pk, budget_stopped=True).exists():
        _finish(newsletter, status=Newsletter.Status.SKIPPED_BUDGET, error="Not drafted: the batch budget was reached.")
        return newsletter.status
    newsletter.model = batch.model
    # --- grounding (issue 9): the topic's source material is gathered first; failures never stop the draft ---
    material = gather_for_newsletter(newsletter=newsletter)
    try:
        answer = _call_within_budget(newsletter=newsletter, client=client or make_client(), sleep=sleep,
                                     material=material)
    except ledger.BudgetExhausted as exc:
        Batch.objects.filter(pk=batch.pk).update(budget_stopped=True)
        _finish(newsletter, status=Newsletter.Status.SKIPPED_BUDGET, error=f"Not drafted: {exc}")
        return newsletter.status
    except GenerationFailed as exc:
        _finish(newsletter, status=Newsletter.Status.FAILED, error=exc.reason)
        return newsletter.status
    except Exception as exc:
        # Anything unforeseen (the task's soft time limit, a database error, an SDK surprise) must not leave the
        # item "generating" for ever: it fails with the reason, an open reservation stays (the outcome of the
        # call is unknown), and the error goes on up so Celery records it.
        _finish(newsletter, status=Newsletter.Status.FAILED, error=f"Stopped by an unexpected error: {_describe(exc)}")
        raise
    try:
        draft, status, error = parse_draft(answer.message), Newsletter.Status.GENERATED, ""
    except InvalidAnswer as exc:
        draft, status, error = None, Newsletter.Status.FAILED, f"The model's answer was not a usable draft: {exc}."
    # The charge and the draft land together: a worker killed between them leaves neither half behind.
    with transaction.atomic():
        ledger.settle(
            entry_id=answer.entry_id,
            actual_usd=answer.cost_usd,
            usage=answer.usage,
            request_id=getattr(answer.message, "_request_id", None) or answer.message.id,
        )
        _finish(newsletter, status=status, error=error, draft=draft)
        if draft is not None:  # grounding (issue 9): the draft's sources and flags land with it
            grounding.store_check(newsletter=newsletter, draft=draft, material=material)
    return newsletter.status


def _call_within_budget(
    *, newsletter: Newsletter, client: anthropic.Anthropic, sleep, material: Material | None = None
) -> Answer:
    """Reserve, call and retry transient failures; the answer comes back with its reservation unsettled."""
    batch = newsletter.batch
    try:
        price = price_for(batch.model)
    except PriceMissing as exc:
        raise GenerationFailed(str(exc), permanent=True) from None
    max_tokens = settings.ANTHROPIC_MAX_TOKENS
    request = build_request(model=batch.model, max_tokens=max_tokens,
                            topic_message=topic_message(newsletter.topic, material))
    counting = {k: v for k, v in request.items() if k != "max_tokens"}
    attempts = settings.ANTHROPIC_MAX_RETRIES + 1
    # Retrying stops early enough that one more attempt (count + call, each up to the timeout) still ends before
    # the task's soft time limit, so the item ends as "failed, gave up" rather than being cut off mid-call.
    deadline = time.monotonic() + settings.CELERY_TASK_SOFT_TIME_LIMIT
    last_error: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            delay = _retry_delay(attempt=attempt - 1, error=last_error)
            if time.monotonic() + delay + 2 * settings.ANTHROPIC_TIMEOUT_SECONDS > deadline:
                attempts = attempt
                break
            sleep(delay)
        try:
            # Counting tokens is free; it makes the reservation exact instead of guessed.
            input_tokens = client.messages.count_tokens(**counting).input_tokens
        except anthropic.APIError as exc:
            last_error = exc
            if _is_transient(exc):
                continue
            raise GenerationFailed(_describe(exc), permanent=True) from None
        reservation = ledger.reserve(
            idempotency_key=f"newsletter:{newsletter.pk}:attempt:{newsletter.attempts}:try:{attempt}",
            worst_case_usd=worst_case_cost(input_tokens=input_tokens, max_tokens=max_tokens, price=price),
            batch_id=batch.pk,
            newsletter_id=newsletter.pk,
            model=batch.model,
            description=f"Draft for topic #{newsletter.topic_id}",
        )
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
        usage = Usage.from_api(message.usage)
        return Answer(message=message, entry_id=reservation.entry_id, usage=usage, cost_usd=cost_of(usage=usage, price=price))
    raise GenerationFailed(f"Gave up after {attempts} attempts: {_describe(last_error)}", permanent=False)
