"""Discovery's paid calls are metered by the ledger the batches app plugs in; without one they are refused."""
from __future__ import annotations

from decimal import Decimal

import pytest

from batches import ledger
from batches.models import CostLedgerEntry
from topics import metering
from topics.material import AlreadyReserved
from topics.sources import BudgetRefused


def test_discovery_meters_paid_calls_with_the_ledger_of_the_batches_app():
    from batches.metering import LedgerMeter

    assert isinstance(metering.current_meter(), LedgerMeter)


def test_without_a_ledger_plugged_in_every_paid_call_is_refused(monkeypatch):
    monkeypatch.setattr(metering, "_meter_path", None)

    with pytest.raises(BudgetRefused, match="no cost ledger"):
        metering.current_meter().reserve(provider="perplexity", description="search", worst_case_usd=Decimal("0.01"),
                                         idempotency_key="k")


@pytest.mark.django_db
def test_the_ledger_meter_refuses_a_key_already_on_the_ledger_so_no_call_is_made_on_it():
    from batches.metering import LedgerMeter

    meter = LedgerMeter()
    meter.reserve(provider="tubelab", description="search", worst_case_usd=Decimal("0.05"),
                  idempotency_key="discover:tubelab:r1:amazon fba").settle(Decimal("0.05"))

    with pytest.raises(AlreadyReserved):
        meter.reserve(provider="tubelab", description="search", worst_case_usd=Decimal("0.05"),
                      idempotency_key="discover:tubelab:r1:amazon fba")

    [entry] = CostLedgerEntry.objects.all()
    assert (entry.status, entry.amount_usd) == ("settled", Decimal("0.05"))
    assert ledger.month_spent() == Decimal("0.05")
