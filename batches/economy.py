"""Economy batches: a whole batch drafted as one Message Batch at half price, inside the same hard budget.

The life of an economy batch, every step written to the database before the next one starts:

1. select (as any batch), then reserve every request's worst case at the batch price; a request the budget
   cannot cover is skipped and never sent;
2. mark the submission `creating` (committed), then create the Message Batch. A create whose outcome is unknown
   keeps its reservations until the batch is found by listing recent batches, or is provably absent; it is never
   sent twice;
3. poll with backoff (the periodic task, or `runbatch --economy --wait`);
4. once ended, read the results as a stream and match them by custom_id: a succeeded line is settled at the
   batch price from its usage and its draft saved in the same transaction; errored, canceled, expired and
   missing lines are released and their items fail with a plain reason. Each line is settled or released once,
   under a lock on its request row, so a poller killed half-way is finished by the next one;
5. a Message Batch Anthropic answers 404 for ECONOMY_GONE_AFTER_SECONDS on end is given up: it may have run and
   been billed, so its open requests keep their reservations as spent (outcome unknown) and their items fail.

Economy items have no lease: they are `generating` with no `lease_expires_at`, so neither claim() nor the sweeper
ever takes one back and drafts it as a `now` item.
"""
from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anthropic
import httpx2
from anthropic.types.messages import MessageBatchIndividualResponse
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from topics import usage as topic_usage
from topics.material import Material, stored_material

from . import ledger, running
from .generation import Answer, _answer_record, _describe, _is_transient, _usable_usage, make_client, \
    reservation_tokens, write_answer
from .grounding import gather_for_newsletter
from .models import Batch, EconomyRequest, EconomySubmission, Newsletter
from .planning import estimate_topics, topic_message
from .pricing import PriceMissing, cost_of, price_for, worst_case_cost
from .prompts import build_request

logger = logging.getLogger("newsroom.economy")

# Batches created this long before our create was sent (or after it gave up) still count as candidates: clocks
# differ, and the API stamps the batch when it has taken the whole request in.
CLOCK_SKEW = datetime.timedelta(seconds=120)
LIST_PAGE = 100
FOLLOW_WAKE_SECONDS = 15.0

FAILURE_REASONS = {
    EconomyRequest.State.ERRORED: "Anthropic could not process this request in the Message Batch ({detail}); it was "
                                  "not billed.",
    EconomyRequest.State.CANCELED: "The Message Batch was canceled before this request was processed; it was not "
                                   "billed.",
    EconomyRequest.State.EXPIRED: "Anthropic did not get to this request within 24 hours; it was not billed.",
    EconomyRequest.State.MISSING: "The Message Batch's results had no line for this request; its reservation was "
                                  "released.",
    EconomyRequest.State.NOT_SENT: "{detail}",
    EconomyRequest.State.UNKNOWN: "{detail} It may still have been processed and billed, so its reservation stays "
                                  "in the ledger as spent.",
}
AGAIN = " Resume the batch to draft it now, or choose the topic for a new economy batch."


class NotCancelable(Exception):
    """The batch has nothing at Anthropic that could be canceled; the message says why."""


def custom_id_for(newsletter_id: int) -> str:
    """`item-<newsletter id>`: matches ^[a-zA-Z0-9_-]{1,64}$ and is unique across every batch of this desk."""
    return f"item-{newsletter_id}"


def economy_request(*, model: str, max_tokens: int, topic, material: Material | None = None) -> dict[str, Any]:
    """The item's request exactly as generation builds it, with the shared prefix cached for an hour: a Message
    Batch may take longer than five minutes to reach every request, and a 1-hour write is still cheaper than
    paying the full prefix on every request."""
    request = build_request(model=model, max_tokens=max_tokens, topic_message=topic_message(topic, material))
    request["system"] = [
        {**block, "cache_control": {"type": "ephemeral", "ttl": "1h"}} if "cache_control" in block else block
        for block in request["system"]
    ]
    return request


def _token(batch_id: int) -> str:
    return f"economy-{batch_id}"


# --- submission ------------------------------------------------------------------------------------------------


def submit(*, batch_id: int, client: anthropic.Anthropic | None = None,
           sleep: Callable[[float], None] = time.sleep) -> Batch:
    """Select the batch (if not done yet), reserve every request and create its one Message Batch."""
    if running.start_batch(batch_id=batch_id) is not None:
        _estimate_at_batch_price(batch_id=batch_id)
    batch = Batch.objects.get(pk=batch_id)
    if batch.is_finished:
        return batch
    submission, _ = EconomySubmission.objects.get_or_create(batch=batch)
    if submission.state == EconomySubmission.State.PREPARING:
        _reserve_all(submission=submission, client=client or make_client(), sleep=sleep)
        _create(submission_id=submission.pk, client=client or make_client(), sleep=sleep)
    batch.refresh_from_db()
    return batch


def _estimate_at_batch_price(*, batch_id: int) -> None:
    items = Newsletter.objects.filter(batch_id=batch_id).select_related("topic__category").order_by("position", "pk")
    batch = Batch.objects.get(pk=batch_id)
    try:
        plan = estimate_topics(topics=[n.topic for n in items], model=batch.model,
                               max_tokens=settings.ANTHROPIC_MAX_TOKENS, batch_api=True)
    except PriceMissing:
        return  # start_batch has failed the batch with the reason
    Batch.objects.filter(pk=batch_id).update(estimated_cost_usd=plan.estimated_cost_usd)


def _count_tokens(*, client: anthropic.Anthropic, request: dict[str, Any], sleep) -> int:
    counting = {k: v for k, v in request.items() if k != "max_tokens"}
    for attempt in range(settings.ANTHROPIC_MAX_RETRIES + 1):
        try:
            return client.messages.count_tokens(**counting).input_tokens
        except anthropic.APIError as exc:
            if not _is_transient(exc) or attempt == settings.ANTHROPIC_MAX_RETRIES:
                raise
            sleep(min(settings.ANTHROPIC_RETRY_BASE_SECONDS * 2**attempt, settings.ANTHROPIC_RETRY_MAX_SECONDS))
    raise AssertionError("unreachable")


def _reserve_all(*, submission: EconomySubmission, client: anthropic.Anthropic, sleep) -> None:
    """Reserve each item's worst case at the batch price, in item order, before anything is sent.

    Once the budget refuses one request, the items after it are skipped too (as a `now` batch stops), so what is
    sent is always a prefix of the batch that the budget covers in full.
    """
    batch = submission.batch
    try:
        price = price_for(batch.model)
    except PriceMissing as exc:
        _fail_unsent(submission=submission, reason=str(exc))
        return
    max_tokens = settings.ANTHROPIC_MAX_TOKENS
    items = (batch.newsletters.filter(status=Newsletter.Status.PENDING).select_related("topic__category")
             .order_by("position", "pk"))
    for item in items:
        if EconomySubmission.objects.filter(pk=submission.pk, cancel_requested_at__isnull=False).exists():
            return
        if Batch.objects.filter(pk=batch.pk, budget_stopped=True).exists():
            Newsletter.objects.filter(pk=item.pk, status=Newsletter.Status.PENDING).update(
                status=Newsletter.Status.SKIPPED_BUDGET, error="Not sent: the batch was stopped by its budget.")
            topic_usage.mark_free(topic_ids=[item.topic_id])
            continue
        # The item's source material is gathered first, as for a draft made now: the request carries it, and the
        # reservation counts it (the create rebuilds the same request from the stored documents).
        material = gather_for_newsletter(newsletter=item)
        request = economy_request(model=batch.model, max_tokens=max_tokens, topic=item.topic, material=material)
        try:
            counted = _count_tokens(client=client, request=request, sleep=sleep)
        except anthropic.APIError as exc:
            Newsletter.objects.filter(pk=item.pk, status=Newsletter.Status.PENDING).update(
                status=Newsletter.Status.FAILED, error=f"Not sent: counting its tokens failed ({_describe(exc)}).")
            topic_usage.mark_free(topic_ids=[item.topic_id])
            continue
        custom_id = custom_id_for(item.pk)
        try:
            reservation = ledger.reserve(
                idempotency_key=f"economy:{batch.pk}:{custom_id}",
                worst_case_usd=worst_case_cost(input_tokens=reservation_tokens(counted), max_tokens=max_tokens,
                                               price=price, batch_api=True),
                batch_id=batch.pk, newsletter_id=item.pk, model=batch.model,
                description=f"Economy draft for topic #{item.topic_id} (Message Batches API)",
            )
        except ledger.BudgetExhausted as exc:
            Batch.objects.filter(pk=batch.pk).update(budget_stopped=True)
            Newsletter.objects.filter(pk=item.pk, status=Newsletter.Status.PENDING).update(
                status=Newsletter.Status.SKIPPED_BUDGET, error=f"Not sent: {exc}")
            topic_usage.mark_free(topic_ids=[item.topic_id])
            continue
        _record_reserved(submission=submission, item=item, custom_id=custom_id, entry_id=reservation.entry_id)


def _record_reserved(*, submission: EconomySubmission, item: Newsletter, custom_id: str, entry_id: int) -> None:
    """Record the item's request with its reservation, or release the reservation if the item can no longer be sent.

    Gathering and counting take seconds, and an editor may cancel meanwhile: cancel() takes the submission out of
    `preparing` and releases what it finds recorded, so the reservation is recorded only under the submission's
    lock while it is still live, and only by the run that moves the item on. A reservation recorded nowhere would
    stay open forever, so it is released; one another run recorded (the same key gives the same entry) is kept.
    """
    with transaction.atomic():
        live = EconomySubmission.objects.select_for_update().filter(
            pk=submission.pk, state=EconomySubmission.State.PREPARING, cancel_requested_at__isnull=True).exists()
        # No lease and no claim time: claim() never takes an economy item, and the sweeper never takes it back.
        moved = live and Newsletter.objects.filter(pk=item.pk, status=Newsletter.Status.PENDING).update(
            status=Newsletter.Status.GENERATING, claim_token=_token(submission.batch_id), claimed_at=None,
            lease_expires_at=None, attempts=1, queued_at=timezone.now())
        if moved:
            EconomyRequest.objects.create(newsletter=item, submission=submission, custom_id=custom_id,
                                          entry_id=entry_id)
        elif not EconomyRequest.objects.filter(entry_id=entry_id).exists():
            ledger.release(entry_id=entry_id)


def _requests_for(submission: EconomySubmission) -> list[tuple[str, dict[str, Any]]]:
    rows = (submission.requests.filter(state=EconomyRequest.State.RESERVED)
            .select_related("newsletter__topic__category").order_by("newsletter__position", "newsletter_id"))
    model, max_tokens = submission.batch.model, settings.ANTHROPIC_MAX_TOKENS
    rows = list(rows)
    materials = stored_material(topics=[row.newsletter.topic for row in rows])
    return [(row.custom_id, economy_request(model=model, max_tokens=max_tokens, topic=row.newsletter.topic,
                                            material=materials[row.newsletter.topic_id]))
            for row in rows]


def _create(*, submission_id: int, client: anthropic.Anthropic, sleep) -> None:
    """Create the Message Batch once. The `creating` mark is committed before the request goes out."""
    submission = EconomySubmission.objects.select_related("batch").get(pk=submission_id)
    requests = _requests_for(submission)
    if not requests:
        EconomySubmission.objects.filter(pk=submission.pk, state=EconomySubmission.State.PREPARING).update(
            state=EconomySubmission.State.NOT_CREATED)
        _fail_unsent(submission=submission, reason="Nothing was sent: no request fitted the budget.")
        return
    now = timezone.now()
    claimed = EconomySubmission.objects.filter(
        pk=submission.pk, state=EconomySubmission.State.PREPARING, cancel_requested_at__isnull=True
    ).update(state=EconomySubmission.State.CREATING, create_attempted_at=now, create_finished_at=None,
             create_attempts=submission.create_attempts + 1, request_count=len(requests), last_error="")
    if not claimed:
        return
    body = [{"custom_id": custom_id, "params": params} for custom_id, params in requests]
    last_error: Exception | None = None
    for attempt in range(settings.ANTHROPIC_MAX_RETRIES + 1):
        if attempt:
            sleep(min(settings.ANTHROPIC_RETRY_BASE_SECONDS * 2**(attempt - 1), settings.ANTHROPIC_RETRY_MAX_SECONDS))
        try:
            created = client.messages.batches.create(requests=body)
        except anthropic.APIStatusError as exc:
            if exc.status_code >= 500:
                return _outcome_unknown(submission, exc)  # the API may have taken the batch before failing
            last_error = exc
            if exc.status_code in (408, 409, 429):
                continue  # refused before anything was created: safe to send again
            break
        except anthropic.APIConnectionError as exc:
            if isinstance(exc.__cause__, httpx2.ConnectError):
                last_error = exc  # no connection, so nothing was sent
                continue
            return _outcome_unknown(submission, exc)  # includes timeouts: the batch may exist
        _record_created(submission_id=submission.pk, created=created, sent=[c for c, _ in requests], client=client)
        return
    EconomySubmission.objects.filter(pk=submission.pk).update(
        state=EconomySubmission.State.NOT_CREATED, create_finished_at=timezone.now(), last_error=_describe(last_error))
    _fail_unsent(submission=submission, reason=f"The Message Batch could not be created: {_describe(last_error)}.")


def _outcome_unknown(submission: EconomySubmission, error: Exception) -> None:
    logger.warning("economy batch %s: create outcome unknown (%s); it will be looked for before anything is sent "
                   "again", submission.batch_id, _describe(error))
    now = timezone.now()
    EconomySubmission.objects.filter(pk=submission.pk, state=EconomySubmission.State.CREATING).update(
        create_finished_at=now, next_poll_at=now, last_error=_describe(error))


def _record_created(*, submission_id: int, created, sent: Iterable[str], client: anthropic.Anthropic) -> None:
    now = timezone.now()
    with transaction.atomic():
        submission = EconomySubmission.objects.select_for_update().get(pk=submission_id)
        if submission.anthropic_batch_id:
            return
        submission.anthropic_batch_id = created.id
        submission.state = EconomySubmission.State.SUBMITTED
        submission.submitted_at = created.created_at
        submission.expires_at = created.expires_at
        submission.poll_interval_seconds = int(settings.ECONOMY_POLL_MIN_SECONDS)
        submission.next_poll_at = now + datetime.timedelta(seconds=settings.ECONOMY_POLL_MIN_SECONDS)
        submission.last_error = ""
        submission.save()
        submission.requests.filter(state=EconomyRequest.State.RESERVED, custom_id__in=list(sent)).update(
            state=EconomyRequest.State.SUBMITTED)
        Batch.objects.filter(pk=submission.batch_id, status__in=Batch.ACTIVE_STATUSES).update(
            status=Batch.Status.SUBMITTED)
    # A request reserved after the create was claimed (a second run racing this one) was never sent.
    _resolve_open(submission=submission, states=[EconomyRequest.State.RESERVED], outcome=EconomyRequest.State.NOT_SENT,
                  detail="Not sent: it was reserved after the Message Batch had been created.")
    if submission.cancel_requested_at is not None:
        _send_cancel(submission=submission, client=client)


# --- finding a create whose outcome is unknown ------------------------------------------------------------------


def _total(created) -> int:
    counts = created.request_counts
    return counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired


def result_lines(client: anthropic.Anthropic, batch_id: str) -> Iterator[MessageBatchIndividualResponse]:
    """The results file of an ended Message Batch, line by line as it streams in.

    Read with the HTTP client's own line splitting rather than the SDK's JSONL decoder: the file has CRLF line
    endings, and that decoder breaks on a CRLF split across two network chunks (it parses the lone "\n").
    """
    with client.messages.batches.with_streaming_response.results(batch_id) as response:
        for text in response.iter_lines():
            if text.strip():
                yield MessageBatchIndividualResponse.model_validate(json.loads(text))


def _custom_ids_of(client: anthropic.Anthropic, batch_id: str) -> set[str]:
    return {line.custom_id for line in result_lines(client, batch_id)}


def find_created(*, submission_id: int, client: anthropic.Anthropic, now: datetime.datetime | None = None) -> str:
    """Look for the Message Batch of a create whose outcome is unknown; returns what was concluded.

    The listing is newest first and says no custom_id, so the fingerprint is: created inside the window of our
    create, with exactly our number of requests, and not already ours under another batch. One candidate is it;
    several are told apart by their results' custom_ids once they have ended (ours are unique to this desk).
    Nothing found long after the create means it never arrived: the submission goes back to be created again.
    """
    now = now or timezone.now()
    submission = EconomySubmission.objects.get(pk=submission_id)
    if submission.state != EconomySubmission.State.CREATING:
        return submission.state
    start = submission.create_attempted_at - CLOCK_SKEW
    end = (submission.create_finished_at or now) + CLOCK_SKEW
    known = set(EconomySubmission.objects.exclude(anthropic_batch_id=None).values_list("anthropic_batch_id", flat=True))
    candidates = []
    for created in client.messages.batches.list(limit=LIST_PAGE):
        if created.created_at < start:
            break  # newest first: everything after this is older still
        if created.created_at <= end and created.id not in known and _total(created) == submission.request_count:
            candidates.append(created)
    if len(candidates) > 1:
        ours = set(submission.requests.values_list("custom_id", flat=True))
        candidates = [c for c in candidates if c.processing_status == "ended" and _custom_ids_of(client, c.id) == ours]
        if len(candidates) != 1:
            EconomySubmission.objects.filter(pk=submission.pk).update(
                last_error="Several Message Batches match the create whose outcome was unknown; waiting until their "
                           "results tell which is ours.")
            return "ambiguous"
    if candidates:
        sent = submission.requests.filter(state=EconomyRequest.State.RESERVED).values_list("custom_id", flat=True)
        _record_created(submission_id=submission.pk, created=candidates[0], sent=list(sent), client=client)
        return "found"
    if (now - submission.create_attempted_at).total_seconds() < settings.ECONOMY_ABSENT_AFTER_SECONDS:
        return "not_yet"
    if submission.create_attempts > settings.ANTHROPIC_MAX_RETRIES:
        EconomySubmission.objects.filter(pk=submission.pk, state=EconomySubmission.State.CREATING).update(
            state=EconomySubmission.State.NOT_CREATED)
        _fail_unsent(submission=submission, reason="The Message Batch was never created (every create was lost on "
                                                     "the way).")
        return "absent"
    # Provably absent: the create never arrived, so sending it again cannot make a second batch.
    EconomySubmission.objects.filter(pk=submission.pk, state=EconomySubmission.State.CREATING).update(
        state=EconomySubmission.State.PREPARING)
    _create(submission_id=submission.pk, client=client, sleep=time.sleep)
    return "absent"


# --- polling and collecting -------------------------------------------------------------------------------------


def due_submissions(*, now: datetime.datetime | None = None) -> list[int]:
    """Batches whose submission should be looked at now (submitted and due, or a create to find)."""
    now = now or timezone.now()
    stale = now - datetime.timedelta(seconds=settings.SWEEP_STALE_SECONDS)
    due = Q(state__in=[EconomySubmission.State.SUBMITTED, EconomySubmission.State.CREATING]) & (
        Q(next_poll_at__lte=now) | Q(next_poll_at__isnull=True))
    # A run that died while reserving leaves the submission preparing: carry on once nothing has moved for a while.
    due |= Q(state=EconomySubmission.State.PREPARING, batch__started_at__lt=stale)
    return list(EconomySubmission.objects.filter(due).values_list("batch_id", flat=True))


def _claim_poll(submission: EconomySubmission, *, now: datetime.datetime) -> int | None:
    """Move the next poll time forward (the backoff); only the caller that moved it asks the API now."""
    interval = max(settings.ECONOMY_POLL_MIN_SECONDS,
                   min(submission.poll_interval_seconds * 2 or 0, settings.ECONOMY_POLL_MAX_SECONDS))
    moved = EconomySubmission.objects.filter(pk=submission.pk, next_poll_at=submission.next_poll_at).update(
        next_poll_at=now + datetime.timedelta(seconds=interval), poll_interval_seconds=int(interval),
        polls=submission.polls + 1)
    return int(interval) if moved else None


def poll(*, batch_id: int, client: anthropic.Anthropic | None = None, force: bool = False,
         now: datetime.datetime | None = None) -> str:
    """Look at one economy batch once: find a lost create, ask how the Message Batch is doing, collect it once
    ended. Returns a word for what happened (for logs and the follower)."""
    now = now or timezone.now()
    submission = EconomySubmission.objects.filter(batch_id=batch_id).select_related("batch").first()
    if submission is None:
        return "none"
    if submission.state == EconomySubmission.State.PREPARING:
        submit(batch_id=batch_id, client=client)
        return "submitted"
    if submission.state == EconomySubmission.State.CREATING:
        if submission.create_finished_at is None and (now - submission.create_attempted_at).total_seconds() \
                < settings.ANTHROPIC_TIMEOUT_SECONDS + 30:
            return "creating"  # the create may still be on its way in another process
        if not force and submission.next_poll_at and submission.next_poll_at > now:
            return "waiting"
        if _claim_poll(submission, now=now) is None:
            return "busy"
        return find_created(submission_id=submission.pk, client=client or make_client(), now=now)
    if submission.state != EconomySubmission.State.SUBMITTED:
        return submission.state
    if not force and submission.next_poll_at and submission.next_poll_at > now:
        return "waiting"
    if _claim_poll(submission, now=now) is None:
        return "busy"
    client = client or make_client()
    try:
        status = client.messages.batches.retrieve(submission.anthropic_batch_id)
    except anthropic.NotFoundError as exc:
        return _not_found(submission, exc, now=now)
    except anthropic.APIError as exc:
        EconomySubmission.objects.filter(pk=submission.pk).update(last_error=_describe(exc))
        return "error"
    if status.processing_status != "ended":
        EconomySubmission.objects.filter(pk=submission.pk).update(last_error="", not_found_since=None)
        if submission.cancel_requested_at is not None and status.processing_status == "in_progress":
            _send_cancel(submission=submission, client=client)  # the first cancel did not get through
        return status.processing_status
    try:
        collect(submission_id=submission.pk, client=client)
    except anthropic.NotFoundError as exc:
        return _not_found(submission, exc, now=now)  # an ended batch whose results cannot be had
    return "ended"


def _not_found(submission: EconomySubmission, error: anthropic.NotFoundError, *, now: datetime.datetime) -> str:
    """A 404 for our Message Batch or its results. Right after the create, and again around the end, the API can
    answer 404 for a batch that exists, so it is asked again at the next poll; only a 404 that has lasted
    ECONOMY_GONE_AFTER_SECONDS (counted from the first of an unbroken run of them) gives the batch up."""
    since = submission.not_found_since or now
    EconomySubmission.objects.filter(pk=submission.pk).update(last_error=_describe(error), not_found_since=since)
    if (now - since).total_seconds() < settings.ECONOMY_GONE_AFTER_SECONDS:
        return "not_found"
    _give_up_gone(submission_id=submission.pk, now=now)
    return "gone"


def _give_up_gone(*, submission_id: int, now: datetime.datetime | None = None) -> None:
    """End a Message Batch that Anthropic no longer knows, without ever under-counting money.

    A batch that existed may have run, and been billed, before it became unknown to us (deleted at Anthropic, a key
    of another workspace, results past their 29 days): which of its requests were billed cannot be known. So every
    request still open keeps its worst-case reservation as spent (its outcome is unknown, as for a `now` call that
    timed out) instead of being released; its item fails with the reason and can be drafted again.
    """
    now = now or timezone.now()
    submission = EconomySubmission.objects.get(pk=submission_id)
    hours = (now - (submission.not_found_since or now)).total_seconds() / 3600
    detail = (f"Anthropic no longer knows the Message Batch {submission.anthropic_batch_id}: every poll for "
              f"{hours:.1f} h was answered 404 not found, so it was given up.")
    claimed = EconomySubmission.objects.filter(pk=submission.pk, state=EconomySubmission.State.SUBMITTED).update(
        state=EconomySubmission.State.GONE, ended_at=now, next_poll_at=None)
    if not claimed:
        return  # another poller gave it up (or collected it) first
    logger.warning("economy batch %s: %s", submission.batch_id, detail)
    _resolve_open(submission=submission, states=EconomyRequest.OPEN_STATES, outcome=EconomyRequest.State.UNKNOWN,
                  detail=detail)
    running.finalize_batch(batch_id=submission.batch_id)
    batch = Batch.objects.get(pk=submission.batch_id)
    note = f"{detail} Its reservations stay in the ledger as spent: those requests may have been billed."
    if note not in batch.status_reason:
        Batch.objects.filter(pk=batch.pk).update(status_reason=f"{batch.status_reason} {note}".strip())


def collect(*, submission_id: int, client: anthropic.Anthropic) -> None:
    """Read an ended Message Batch's results as a stream and settle or release every line, once each."""
    submission = EconomySubmission.objects.select_related("batch").get(pk=submission_id)
    price = price_for(submission.batch.model)
    open_rows = dict(submission.requests.filter(state__in=EconomyRequest.OPEN_STATES).values_list("custom_id", "pk"))
    seen: set[str] = set()
    for line in result_lines(client, submission.anthropic_batch_id):
        seen.add(line.custom_id)
        if line.custom_id in open_rows:
            settle_line(request_id=open_rows[line.custom_id], line=line, price=price)
        else:
            logger.info("economy batch %s: result line %s is not an open request of it", submission.batch_id,
                        line.custom_id)
    # Only after the whole stream was read: a poller killed half-way must not call the unread lines missing.
    for custom_id in set(open_rows) - seen:
        _resolve_unanswered(request_id=open_rows[custom_id], outcome=EconomyRequest.State.MISSING, detail="")
    EconomySubmission.objects.filter(pk=submission.pk).update(
        state=EconomySubmission.State.ENDED, ended_at=timezone.now(), next_poll_at=None, last_error="",
        not_found_since=None)
    running.finalize_batch(batch_id=submission.batch_id)


def settle_line(*, request_id: int, line, price) -> bool:
    """Settle (succeeded) or release (anything else) one result line. False when it was already done."""
    kind = line.result.type
    if kind != "succeeded":
        detail = ""
        if kind == "errored":
            error = getattr(line.result.error, "error", None)
            detail = f"{getattr(error, 'type', 'error')}: {getattr(error, 'message', '')}".strip(": ")
        outcome = {"errored": EconomyRequest.State.ERRORED, "canceled": EconomyRequest.State.CANCELED,
                   "expired": EconomyRequest.State.EXPIRED}.get(kind, EconomyRequest.State.ERRORED)
        return _resolve_unanswered(request_id=request_id, outcome=outcome, detail=detail or kind)
    message = line.result.message
    with transaction.atomic():
        row = EconomyRequest.objects.select_for_update().select_related("newsletter__batch").get(pk=request_id)
        if row.state not in EconomyRequest.OPEN_STATES:
            return False
        usage = _usable_usage(message)
        cost = cost_of(usage=usage, price=price, batch_api=True) if usage is not None else Decimal(0)
        answer = Answer(message=message, entry_id=row.entry_id, usage=usage, cost_usd=cost)
        material = stored_material(topics=[row.newsletter.topic])[row.newsletter.topic_id]
        write_answer(_answer_record(newsletter=row.newsletter, token=_token(row.newsletter.batch_id), answer=answer,
                                    material=material))
        row.state, row.resolved_at = EconomyRequest.State.SUCCEEDED, timezone.now()
        row.save(update_fields=["state", "resolved_at"])
    return True


def _resolve_unanswered(*, request_id: int, outcome: str, detail: str) -> bool:
    """Release the request's reservation (it was not billed) and fail its item, in one transaction. An `unknown`
    outcome (it may have been billed) keeps the reservation as spent instead."""
    with transaction.atomic():
        row = EconomyRequest.objects.select_for_update().select_related("newsletter").get(pk=request_id)
        if row.state not in EconomyRequest.OPEN_STATES:
            return False
        if row.entry_id is not None and outcome != EconomyRequest.State.UNKNOWN:
            ledger.release(entry_id=row.entry_id)
        reason = FAILURE_REASONS[outcome].format(detail=detail) + AGAIN
        Newsletter.objects.filter(pk=row.newsletter_id, status=Newsletter.Status.GENERATING,
                                  claim_token=_token(row.newsletter.batch_id)).update(
            status=Newsletter.Status.FAILED, error=reason, cost_usd=ledger.newsletter_spent(row.newsletter_id))
        topic_usage.mark_free(topic_ids=[row.newsletter.topic_id])
        row.state, row.detail, row.resolved_at = outcome, detail[:500], timezone.now()
        row.save(update_fields=["state", "detail", "resolved_at"])
    return True


def _resolve_open(*, submission: EconomySubmission, states, outcome: str, detail: str) -> None:
    for pk in submission.requests.filter(state__in=states).values_list("pk", flat=True):
        _resolve_unanswered(request_id=pk, outcome=outcome, detail=detail)


def _fail_unsent(*, submission: EconomySubmission, reason: str) -> None:
    """Nothing (more) will be sent: release every reservation still waiting and fail the items never reserved."""
    _resolve_open(submission=submission, states=[EconomyRequest.State.RESERVED], outcome=EconomyRequest.State.NOT_SENT,
                  detail=reason)
    unsent = Newsletter.objects.filter(batch_id=submission.batch_id, status=Newsletter.Status.PENDING)
    topic_ids = list(unsent.values_list("topic_id", flat=True))
    unsent.update(status=Newsletter.Status.FAILED, error=reason + AGAIN)
    topic_usage.mark_free(topic_ids=topic_ids)
    running.finalize_batch(batch_id=submission.batch_id)


# --- cancel ------------------------------------------------------------------------------------------------------


def _send_cancel(*, submission: EconomySubmission, client: anthropic.Anthropic) -> None:
    try:
        client.messages.batches.cancel(submission.anthropic_batch_id)
    except anthropic.APIError as exc:
        logger.warning("economy batch %s: cancel not taken yet (%s)", submission.batch_id, _describe(exc))
    EconomySubmission.objects.filter(pk=submission.pk).update(next_poll_at=timezone.now())


def cancel(*, batch_id: int, client: anthropic.Anthropic | None = None) -> Batch:
    """Cancel an economy batch: requests already finished are still settled (when the results come), the rest
    released. Raises NotCancelable when there is nothing to cancel."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None:
        raise NotCancelable(f"There is no batch #{batch_id}.")
    submission = EconomySubmission.objects.filter(batch=batch).first()
    if batch.delivery != Batch.Delivery.ECONOMY or submission is None:
        raise NotCancelable(f"Batch #{batch_id} is not an economy batch with Anthropic: there is nothing to cancel.")
    if submission.state in (EconomySubmission.State.ENDED, EconomySubmission.State.NOT_CREATED,
                            EconomySubmission.State.GONE) or batch.is_finished:
        raise NotCancelable(f"Batch #{batch_id} has already ended: there is nothing left to cancel.")
    EconomySubmission.objects.filter(pk=submission.pk, cancel_requested_at__isnull=True).update(
        cancel_requested_at=timezone.now())
    # Not created yet: taking the submission out of `preparing` stops the create from ever going out.
    if EconomySubmission.objects.filter(pk=submission.pk, state=EconomySubmission.State.PREPARING).update(
            state=EconomySubmission.State.NOT_CREATED):
        _fail_unsent(submission=submission, reason="Canceled before it was sent.")
    submission.refresh_from_db()
    if submission.state == EconomySubmission.State.SUBMITTED:
        _send_cancel(submission=submission, client=client or make_client())
    batch.refresh_from_db()
    return batch


# --- what the desk and the command show --------------------------------------------------------------------------


@dataclass(frozen=True)
class EconomyProgress:
    state: str
    anthropic_batch_id: str | None
    submitted_at: datetime.datetime | None
    expires_at: datetime.datetime | None
    back: int  # requests whose result has been collected (settled or released)
    total: int
    cancel_requested: bool
    last_error: str
    not_found_since: datetime.datetime | None = None  # every poll since then met a 404


def progress(*, batch_id: int) -> EconomyProgress | None:
    submission = EconomySubmission.objects.filter(batch_id=batch_id).first()
    if submission is None:
        return None
    states = list(submission.requests.values_list("state", flat=True))
    not_back = (*EconomyRequest.OPEN_STATES, EconomyRequest.State.UNKNOWN)
    back = sum(1 for s in states if s not in not_back)
    return EconomyProgress(state=submission.state, anthropic_batch_id=submission.anthropic_batch_id,
                           submitted_at=submission.submitted_at, expires_at=submission.expires_at, back=back,
                           total=len(states), cancel_requested=submission.cancel_requested_at is not None,
                           last_error=submission.last_error, not_found_since=submission.not_found_since)


def follow(*, batch_id: int, on_item: Callable[[Newsletter], None] | None = None, timeout: float,
           client: anthropic.Anthropic | None = None, sleep: Callable[[float], None] = time.sleep) -> Batch:
    """Poll one economy batch in this process until it ends (the `--wait` follower); TimeoutError past `timeout`."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while True:
        poll(batch_id=batch_id, client=client)
        batch = Batch.objects.get(pk=batch_id)
        if on_item is not None:
            for item in (batch.newsletters.exclude(pk__in=seen).exclude(status__in=Newsletter.OPEN_STATUSES)
                         .select_related("topic__category").order_by("position", "pk")):
                seen.add(item.pk)
                on_item(item)
        if batch.is_finished:
            return batch
        if time.monotonic() >= deadline:
            raise TimeoutError(batch_id)
        # Sleep until the next poll is due (the backoff), waking at least every FOLLOW_WAKE_SECONDS to show what
        # the periodic poll may have collected meanwhile: a wait of hours costs a few queries a minute.
        due = EconomySubmission.objects.filter(batch_id=batch_id).values_list("next_poll_at", flat=True).first()
        wait = (due - timezone.now()).total_seconds() if due else 1.0
        sleep(max(0.05, min(wait, FOLLOW_WAKE_SECONDS, deadline - time.monotonic())))
