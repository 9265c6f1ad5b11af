"""A SpendMeter for tests that records every hold and what became of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from topics.sources.base import BudgetRefused


@dataclass
class RecordedHold:
    provider: str
    description: str
    worst_case_usd: Decimal
    idempotency_key: str
    requests_before: int  # how many requests the fake had seen when the money was reserved
    state: str = "open"  # open | settled | released
    actual_usd: Decimal | None = None

    def settle(self, actual_usd: Decimal) -> None:
        assert self.state == "open", f"hold {self.idempotency_key} is already {self.state}"
        assert isinstance(actual_usd, Decimal)
        self.state, self.actual_usd = "settled", actual_usd

    def release(self) -> None:
        assert self.state == "open", f"hold {self.idempotency_key} is already {self.state}"
        self.state = "released"


@dataclass
class RecordingMeter:
    """A SpendMeter that keeps every hold; `refuse_after=n` refuses the (n+1)th reservation."""

    count_requests: Callable[[], int] = lambda: 0
    refuse_after: int | None = None
    holds: list[RecordedHold] = field(default_factory=list)

    def reserve(
        self, *, provider: str, description: str, worst_case_usd: Decimal, idempotency_key: str
    ) -> RecordedHold:
        assert isinstance(worst_case_usd, Decimal)
        if self.refuse_after is not None and len(self.holds) >= self.refuse_after:
            raise BudgetRefused("the batch budget of $40 would be crossed")
        hold = RecordedHold(provider, description, worst_case_usd, idempotency_key, self.count_requests())
        self.holds.append(hold)
        return hold
