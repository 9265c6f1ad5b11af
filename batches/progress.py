"""Where a batch stands: items done, per-item status and cost, spend against the budget, errors in plain words."""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Sum
from django.utils import timezone

from .models import Batch, CostLedgerEntry, Newsletter
from .pricing import to_money

ZERO = Decimal("0")

# (pattern in the technical error, what an editor should read). First match wins.
_EXPLANATIONS: list[tuple[re.Pattern[str], str]] = [
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
        return ("Not drafted: the batch's budget ran out before this item. Resume the batch with a higher "
                "budget to draft it.")
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


@dataclass(frozen=True)
class BatchProgress:
    batch: Batch
    items: list[ItemProgress]
    spent_usd: Decimal

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def done(self) -> int:
        return sum(1 for item in self.items if item.finished)

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0

    @property
    def live(self) -> bool:
        """Worth watching: the batch runs, or an item of a finished batch is being drafted again."""
        return not self.batch.is_finished or any(not item.finished for item in self.items)

    @property
    def budget_percent(self) -> float:
        """Share of the budget spent, to a tenth of a percent (a draft costs a small fraction of a budget)."""
        budget = self.batch.budget_usd
        return min(100.0, round(float(100 * self.spent_usd / budget), 1)) if budget else 0.0

    @property
    def remaining_usd(self) -> Decimal:
        return max(self.batch.budget_usd - self.spent_usd, ZERO)

    def as_dict(self) -> dict:
        """JSON-ready (money as strings), for the page's polling."""
        batch = self.batch
        return {
            "batch": batch.pk,
            "status": batch.status,
            "status_label": batch.get_status_display(),
            "status_reason": batch.status_reason,
            "finished": batch.is_finished,
            "live": self.live,
            "done": self.done,
            "total": self.total,
            "percent": self.percent,
            "budget_usd": str(batch.budget_usd),
            "spent_usd": str(self.spent_usd),
            "remaining_usd": str(self.remaining_usd),
            "estimated_cost_usd": str(batch.estimated_cost_usd),
            "budget_percent": self.budget_percent,
            "overrun_usd": str(batch.overrun_usd),
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


def batch_progress(*, batch: Batch) -> BatchProgress:
    """The batch's items with their live cost, in three queries whatever the number of items."""
    newsletters = list(
        Newsletter.objects.filter(batch=batch)
        .select_related("topic__category")
        .defer("body_markdown", "topic__raw", "topic__engagement")
        .order_by("position", "pk")
    )
    # Read the cost from the ledger rather than from the item: while an item drafts, its open reservation is
    # already spent as far as the budget is concerned, and the editor should see it.
    per_item = dict(
        CostLedgerEntry.objects.filter(batch=batch)
        .values_list("newsletter_id")
        .annotate(total=Sum("amount_usd"))
        .order_by()
    )
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
    return BatchProgress(batch=batch, items=items, spent_usd=spent)
