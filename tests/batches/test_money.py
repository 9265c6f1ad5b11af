"""Money as the desk shows it (batches/money.py): dollars, at most four decimals, six in the ledger."""
from __future__ import annotations

from decimal import Decimal

import pytest

from batches.money import format_percent, format_usd


@pytest.mark.parametrize("amount, shown", [
    ("0.0662210000000000", "$0.0662"),  # a SQLite sum, as the batch list used to show it
    ("0.211002000000000", "$0.211"),
    (Decimal("40.000000"), "$40.00"),
    (0, "$0.00"),
    ("1234.5", "$1,234.50"),
    ("0.00005", "$0.0001"),
    ("-0.5", "-$0.50"),
])
def test_an_amount_shows_as_dollars_with_cents_and_at_most_four_decimals(amount, shown):
    assert format_usd(amount) == shown


def test_a_tiny_amount_never_reads_as_nothing():
    assert format_usd(Decimal("0.000012")) == "< $0.0001"


def test_the_ledger_detail_shows_six_decimals():
    assert format_usd("0.211002000000000", places=6) == "$0.211002"
    assert format_usd("0.000012", places=6) == "$0.000012"


def test_a_missing_amount_shows_a_dash():
    assert format_usd(None) == "—"


@pytest.mark.parametrize("value, shown", [(0, "0%"), (0.4, "0.4%"), (14.8, "14.8%"), (100, "100%"),
                                          (672.4, "672%")])
def test_a_share_of_the_budget_keeps_its_true_size(value, shown):
    assert format_percent(value) == shown
