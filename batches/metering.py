"""The cost ledger as the meter of paid calls made in topics/: discovery's (plugged into topics.discovery by
batches.apps) and a draft's research (charged to the draft's batch)."""
from __future__ import annotations

from decimal import Decimal

from topics.material import AlreadyReserved
from topics.sources import BudgetRefused

from . import ledger


class _LedgerHold:
    def __init__(self, entry_id: int):
        self.entry_id = entry_id

    def settle(self, actual_usd: Decimal) -> None:
        ledger.settle(entry_id=self.entry_id, actual_usd=actual_usd)

    def release(self) -> None:
        ledger.release(entry_id=self.entry_id)


def _reserve(*, idempotency_key: str, **entry) -> _LedgerHold:
    """Reserve on the ledger for one paid call. A key that already has an entry is refused (AlreadyReserved), not
    handed back: that entry is settled or about to be, so a call made on it would be paid and never recorded."""
    try:
        reservation = ledger.reserve(idempotency_key=idempotency_key, **entry)
    except ledger.BudgetExhausted as exc:
        raise BudgetRefused(str(exc)) from exc
    if not reservation.created:
        raise AlreadyReserved(idempotency_key)
    return _LedgerHold(reservation.entry_id)


class LedgerMeter:
    """Paid discovery calls go through the ledger like drafts do, under the monthly cap when one is set."""

    def reserve(self, *, provider: str, description: str, worst_case_usd: Decimal, idempotency_key: str) -> _LedgerHold:
        return _reserve(idempotency_key=idempotency_key, worst_case_usd=worst_case_usd, provider=provider,
                        description=description)


class BatchMeter:
    """Research for a draft is charged to the draft's batch, under that batch's budget, like the draft itself."""

    def __init__(self, *, batch_id: int, newsletter_id: int | None = None):
        self.batch_id = batch_id
        self.newsletter_id = newsletter_id

    def reserve(self, *, provider: str, description: str, worst_case_usd: Decimal, idempotency_key: str) -> _LedgerHold:
        return _reserve(idempotency_key=idempotency_key, worst_case_usd=worst_case_usd, batch_id=self.batch_id,
                        newsletter_id=self.newsletter_id, provider=provider, description=description)
