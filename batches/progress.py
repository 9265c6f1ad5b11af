"""Where a batch stands: what was drafted, failed or skipped, per-item status and cost, spend against the budget
(settled and reserved apart), why it stopped, whether it waits for a worker, and errors in plain words."""
from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from django.db.models import Sum
from django.utils import timezone

from .models import Batch, CostLedgerEntry, Newsletter
from .money import format_percent, format_usd
from .pricing import to_money

ZERO = Decimal("0")
# A batch nobody has picked up after this long is worth a word: a worker normally takes it within seconds.
WORKER_WAIT = datetime.timedelta(seconds=60)
# The ledger's refusal names the worst case of the call that did not fit ("… could cost up to $0.0421.").
_WORST_CASE = re.compile(r"up to \$\s?([0-9][0-9,]*(?:\.[0-9]+)?)")

# (pattern in the technical error, what an editor should read). First match wins.
_EXPLANATIONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"no longer knows the Message Batch", re.I),
     "Anthropic kept answering that it does not know this economy batch (404), so it was given up. The request may "
     "still have been billed, so its reservation stays counted as spent. Resume the batch to draft it now."),
    (re.compile(r"not a readable answer", re.I),
     "Claude's answers kept arriving garbled (a proxy's error page, an empty or broken reply); any charge for them "
     "stays in the ledger. Resume the batch to try again."),
    (re.compile(r"\b401\b|authentication_error|x-api-key", re.I),
     "Claude refused our API key. An administrator needs to check ANTHROPIC_API_KEY; then resume the batch."),
    (re.compile(r"\b402\b|billing_error|credit balance", re.I),
     "The Anthropic account has run out of credit. Ask whoever pays for it to top it up; then resume the batch."),
    (re.compile(r"\b403\b|permission_error", re.I),
     "Our Anthropic API key is not allowed to use this model. An administrator needs to check the key or model."),
    (re.compile(r"\b404\b|not_found_error", re.I),
     "Claude does not know the model this batch asked for. An administrator needs to check ANTHROPIC_MODEL."),
    (re.compile(r"\b429\b|rate_limit", re.I),
     "Claude was too busy for us (rate limit) and kept saying so. Resume the batch in a few minutes."),
    (re.compile(r"\b529\b|overloaded", re.I),
     "Claude was overloaded and kept turning us away. Resume the batch in a few minutes."),
    (re.compile(r"did not answer within|timed out|timeout", re.I),
     "Claude did not answer in time. Resume the batch to try again; any charge for the lost answer stays "
     "in the ledger."),
    (re.compile(r"could not reach", re.I),
     "We could not reach Claude over the network. Check the server's connection; then resume the batch."),
    (re.compile(r"\b50\d\b|api_error|internal server error", re.I),
     "Claude had an internal error and kept failing. Resume the batch later."),
    (re.compile(r"not a usable draft|cut off", re.I),
     "Claude answered, but not with a usable draft (a part was missing, too long or cut off). Ask for a new "
     "draft or resume the batch."),
    (re.compile(r"no price", re.I),
     "There is no price for this model in the price table, so no call was made. An administrator needs to add "
     "one; then resume the batch."),
    (re.compile(r"interrupted \d+ times", re.I),
     "Drafting was cut off several times (a worker stopped or the database went away mid-draft), so it was not "
     "tried again automatically. Resume the batch to try once more."),
    (re.compile(r"could not be saved", re.I),
     "Claude's draft was paid for but the database refused to store it. This needs a developer."),
    (re.compile(r"\b400\b|invalid_request", re.I),
     "Claude rejected the request as malformed. This needs a developer; resuming will not help."),
]
_BUDGET_MONTH = re.compile(r"monthly cap", re.I)


def explain_error(*, status: str, error: str) -> str:
    """An item's problem in words an editor understands; empty when the item has none."""
    if status == Newsletter.Status.SKIPPED_BUDGET:
        if _BUDGET_MONTH.search(error):
            return "Not drafted: this month's spending cap was reached. It can be drafted next month."
        return ("Not drafted: what was left of the batch's budget could not cover the worst case of this draft. "
                "Resume the batch with a higher budget to draft it.")
    if status != Newsletter.Status.FAILED:
        return ""
    for pattern, explanation in _EXPLANATIONS:
        if pattern.search(error):
            return explanation
    return "Drafting failed. Resume the batch to try again; the details below say why."


@dataclass(frozen=True)
class ItemProgress:
    id: int
    position: int
    topic_id: int
    title: str
    category: str
    score: float
    status: str
    status_label: str
    cost_usd: Decimal
    subject: str
    problem: str
    detail: str

    @property
    def finished(self) -> bool:
        return self.status in Newsletter.FINAL_STATUSES

    @property
    def has_draft(self) -> bool:
        return self.status in Newsletter.DRAFTED_STATUSES


def counts_label(*, drafted: int, failed: int, skipped: int, in_flight: int = 0) -> str:
    """"6 drafted · 1 failed · 1 skipped", and what is still on its way: never "done" for a failure."""
    parts = [f"{drafted} drafted", f"{failed} failed", f"{skipped} skipped"]
    if in_flight:
        parts.append(f"{in_flight} in progress")
    return " · ".join(parts)


def worst_case_refused(errors: list[str]) -> Decimal | None:
    """The worst case of the call the budget refused, as the ledger's refusal (an item's error) states it."""
    for error in errors:
        match = _WORST_CASE.search(error)
        if match:
            try:
                return Decimal(match.group(1).replace(",", ""))
            except InvalidOperation:
                continue
    return None


@dataclass(frozen=True)
class BatchProgress:
    batch: Batch
    items: list[ItemProgress]
    spent_usd: Decimal  # what counts against the budget: settled costs plus open reservations
    reserved_usd: Decimal = ZERO  # open reservations: calls in flight, or whose outcome is unknown
    worker_missing: bool = False  # set by batch_progress when the batch waits and no worker answers
    economy: dict | None = None  # an economy batch: where it stands at Anthropic (economy_status)

    def _count(self, statuses) -> int:
        return sum(1 for item in self.items if item.status in statuses)

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def done(self) -> int:
        return sum(1 for item in self.items if item.finished)

    @property
    def drafted(self) -> int:
        return self._count(Newsletter.DRAFTED_STATUSES)

    @property
    def failed(self) -> int:
        return self._count((Newsletter.Status.FAILED,))

    @property
    def skipped(self) -> int:
        return self._count((Newsletter.Status.SKIPPED_BUDGET,))

    @property
    def in_flight(self) -> int:
        return self._count(Newsletter.OPEN_STATUSES)

    @property
    def counts_label(self) -> str:
        return counts_label(drafted=self.drafted, failed=self.failed, skipped=self.skipped, in_flight=self.in_flight)

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0

    @property
    def live(self) -> bool:
        """Worth watching: the batch runs, or an item of a finished batch is being drafted again."""
        return not self.batch.is_finished or self.in_flight > 0

    @property
    def status(self) -> str:
        """The batch's status as it really is: a finished batch with an item being drafted again is running."""
        if self.batch.is_finished and self.in_flight:
            return Batch.Status.RUNNING
        return self.batch.status

    @property
    def status_label(self) -> str:
        return Batch.Status(self.status).label

    @property
    def settled_usd(self) -> Decimal:
        return self.spent_usd - self.reserved_usd

    @property
    def budget_percent(self) -> float:
        """Share of the budget spent or reserved, to a tenth of a percent (a draft costs a small fraction)."""
        budget = self.batch.budget_usd
        return round(float(100 * self.spent_usd / budget), 1) if budget else 0.0

    @property
    def budget_bar(self) -> float:
        """The gauge's fill: the true share, but never past a full gauge."""
        return min(100.0, self.budget_percent)

    @property
    def remaining_usd(self) -> Decimal:
        return max(self.batch.budget_usd - self.spent_usd, ZERO)

    @property
    def worst_case_usd(self) -> Decimal | None:
        """For a batch the budget stopped: what the refused call could have cost."""
        if self.batch.status != Batch.Status.BUDGET_EXHAUSTED and not self.batch.budget_stopped:
            return None
        return worst_case_refused([item.detail for item in self.items if item.status == Newsletter.Status.SKIPPED_BUDGET])

    @property
    def stop_note(self) -> str:
        """Why a budget-stopped batch stopped, in figures: spent, left, and the call that did not fit."""
        if self.batch.status != Batch.Status.BUDGET_EXHAUSTED:
            return ""
        budget = self.batch.budget_usd
        note = (f"Stopped by the budget: {format_usd(self.spent_usd)} spent ({format_percent(self.budget_percent)}) "
                f"and {format_usd(self.remaining_usd)} left of {format_usd(budget)}.")
        worst = self.worst_case_usd
        if worst is not None:
            note += (f" The next draft could have cost up to {format_usd(worst)} (its worst case), more than was "
                     "left, so it was not started.")
        return note + " Resume the batch with a higher budget to draft the skipped items."

    @property
    def waiting_for_worker(self) -> bool:
        return self.worker_missing

    def as_dict(self) -> dict:
        """JSON-ready (money as strings, plus the same figures formatted for people), for the page's polling."""
        batch = self.batch
        return {
            "batch": batch.pk,
            "status": self.status,
            "status_label": self.status_label,
            "status_reason": batch.status_reason,
            "stop_note": self.stop_note,
            "finished": batch.is_finished and not self.in_flight,
            "live": self.live,
            "waiting_for_worker": self.waiting_for_worker,
            "done": self.done,
            "total": self.total,
            "percent": self.percent,
            "drafted": self.drafted,
            "failed": self.failed,
            "skipped": self.skipped,
            "in_flight": self.in_flight,
            "counts_label": self.counts_label,
            "budget_usd": str(batch.budget_usd),
            "spent_usd": str(self.spent_usd),
            "settled_usd": str(self.settled_usd),
            "reserved_usd": str(self.reserved_usd),
            "remaining_usd": str(self.remaining_usd),
            "estimated_cost_usd": str(batch.estimated_cost_usd),
            "budget_percent": self.budget_percent,
            "overrun_usd": str(batch.overrun_usd),
            "budget_bar": self.budget_bar,
            "economy": self.economy,
            "shown": {
                "spent": format_usd(self.spent_usd),
                "settled": format_usd(self.settled_usd),
                "reserved": format_usd(self.reserved_usd),
                "remaining": format_usd(self.remaining_usd),
                "budget": format_usd(batch.budget_usd),
                "estimate": format_usd(batch.estimated_cost_usd),
                "budget_percent": format_percent(self.budget_percent),
            },
            "items": [
                {
                    "id": item.id,
                    "position": item.position,
                    "topic": item.topic_id,
                    "title": item.title,
                    "category": item.category,
                    "status": item.status,
                    "status_label": item.status_label,
                    "finished": item.finished,
                    "has_draft": item.has_draft,
                    "cost_usd": str(item.cost_usd),
                    "cost_shown": format_usd(item.cost_usd),
                    "subject": item.subject,
                    "problem": item.problem,
                    "detail": item.detail,
                }
                for item in self.items
            ],
        }


def _status_label(newsletter: Newsletter, now) -> str:
    if newsletter.status == Newsletter.Status.GENERATING and newsletter.lease_expires_at is not None \
            and newsletter.lease_expires_at < now:
        return "Interrupted: the sweeper will put it back in line"
    if newsletter.status == Newsletter.Status.PENDING and newsletter.interruptions:
        return f"Waiting (retry {newsletter.interruptions} after an interruption)"
    return newsletter.get_status_display()
def waiting_since(*, batch: Batch, items: list[ItemProgress]) -> datetime.datetime | None:
    """Since when the batch has work that no worker has picked up, or None when nothing waits."""
    if batch.status in (Batch.Status.PENDING, Batch.Status.QUEUED):
        return batch.started_at or batch.created_at
    waiting = any(item.status == Newsletter.Status.PENDING for item in items)
    drafting = any(item.status == Newsletter.Status.GENERATING for item in items)
    if waiting and not drafting:
        return batch.started_at or batch.created_at
    return None


def _clock(moment: datetime.datetime, now: datetime.datetime) -> str:
    """"10:42" today, "tomorrow 10:42", else "03 Dec 10:42", in the desk's time zone."""
    local, today = timezone.localtime(moment), timezone.localtime(now).date()
    day = {today: "", today + datetime.timedelta(days=1): "tomorrow "}.get(local.date(), f"{local:%d %b} ")
    return f"{day}{local:%H:%M}"


def economy_status(*, batch: Batch, now: datetime.datetime | None = None) -> dict | None:
    """Where an economy batch stands at Anthropic, JSON-ready for the page and its polling: the line ("with
    Anthropic since 10:42 · 3 of 8 back · expires tomorrow 10:42"), the cancel and last-poll notes, and whether
    Cancel still applies. None for a `now` batch."""
    if batch.delivery != Batch.Delivery.ECONOMY:
        return None
    from .economy import progress as economy_progress  # the Anthropic SDK, only for economy batches

    now = now or timezone.now()
    shown = economy_progress(batch_id=batch.pk)
    if shown is None:
        line = "never submitted to Anthropic" if batch.is_finished else "waiting for a worker to submit it to Anthropic"
        return {"line": line, "state": None, "back": 0, "total": 0, "cancel_requested": False, "last_error": "",
                "cancelable": False}
    parts = []
    if shown.submitted_at:
        parts.append(f"with Anthropic since {_clock(shown.submitted_at, now)}")
    elif shown.state in ("preparing", "creating"):
        parts.append("being submitted to Anthropic")
    parts.append(f"{shown.back} of {shown.total} back")
    if shown.state == "gone":
        parts.append("given up: Anthropic answered 404 for it from "
                     f"{_clock(shown.not_found_since or now, now)}; reservations kept")
    elif shown.not_found_since and shown.state == "submitted":
        parts.append(f"Anthropic has answered 404 since {_clock(shown.not_found_since, now)}")
    if shown.expires_at and not batch.is_finished:
        parts.append(f"expires {_clock(shown.expires_at, now)}")
    return {
        "line": " · ".join(parts),
        "state": shown.state,
        "back": shown.back,
        "total": shown.total,
        "cancel_requested": shown.cancel_requested,
        "last_error": shown.last_error,
        "cancelable": not batch.is_finished and not shown.cancel_requested
        and shown.state in ("preparing", "creating", "submitted"),
    }


def batch_progress(*, batch: Batch) -> BatchProgress:
    """The batch's items with their live cost, in two queries whatever the number of items (plus a cached worker
    ping when the batch has waited a minute for one)."""
    newsletters = list(
        Newsletter.objects.filter(batch=batch)
        .select_related("topic__category")
        .defer("body_markdown", "topic__raw", "topic__engagement")
        .order_by("position", "pk")
    )
    # Read the cost from the ledger rather than from the item: while an item drafts, its open reservation is
    # already spent as far as the budget is concerned, and the editor should see it.
    per_item: dict[int | None, Decimal] = {}
    reserved = ZERO
    rows = (CostLedgerEntry.objects.filter(batch=batch).values_list("newsletter_id", "status")
            .annotate(total=Sum("amount_usd")).order_by())
    for newsletter_id, status, total in rows:
        per_item[newsletter_id] = per_item.get(newsletter_id, ZERO) + (total or ZERO)
        if status == CostLedgerEntry.Status.RESERVED:
            reserved += total or ZERO
    spent = to_money(sum(per_item.values(), ZERO))
    now = timezone.now()
    items = [
        ItemProgress(
            id=n.pk,
            position=n.position,
            topic_id=n.topic_id,
            title=n.topic.title,
            category=n.topic.category.name,
            score=n.topic.score,
            status=n.status,
            status_label=_status_label(n, now),
            cost_usd=to_money(per_item.get(n.pk, ZERO)),
            subject=n.subject,
            problem=explain_error(status=n.status, error=n.error),
            detail=n.error,
        )
        for n in newsletters
    ]
    since = waiting_since(batch=batch, items=items)
    worker_missing = False
    if since is not None and timezone.now() - since >= WORKER_WAIT:
        from .preflight import worker_status  # only asked when something has waited: the ping is cached

        worker_missing = not worker_status().alive
    return BatchProgress(batch=batch, items=items, spent_usd=spent, reserved_usd=to_money(reserved),
                         worker_missing=worker_missing, economy=economy_status(batch=batch, now=now))
