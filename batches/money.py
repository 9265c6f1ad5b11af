"""Money as the desk shows it: dollars, at most four decimals in lists and summaries, six in the ledger's detail.

The ledger keeps six decimal places (and SQLite sums come back with more); an editor reads "$0.0662", never
"0.0662210000000000". This is the one place that decides how an amount is written for people.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

SUMMARY_PLACES = 4
LEDGER_PLACES = 6


def format_usd(amount: Decimal | int | str | float | None, *, places: int = SUMMARY_PLACES) -> str:
    """`$1,234.50`, `$0.0662`, `$40.00`: cents always, then up to `places` decimals without trailing zeros.

    A non-zero amount too small to show at `places` reads "< $0.0001" rather than a misleading "$0.0000".
    """
    if amount is None or amount == "":
        return "—"
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        return str(amount)
    if not value.is_finite():
        return str(amount)
    quantum = Decimal(1).scaleb(-places)
    rounded = value.quantize(quantum, rounding=ROUND_HALF_UP)
    if rounded == 0 and value != 0:
        return f"{'-' if value < 0 else ''}< ${quantum}"
    text = f"{abs(rounded):,.{places}f}"
    whole, _, decimals = text.partition(".")
    decimals = decimals.rstrip("0").ljust(2, "0")
    return f"{'-' if rounded < 0 else ''}${whole}.{decimals}"


def format_percent(value: float | Decimal | int | None) -> str:
    """A share of a budget as people read it: one decimal under 100 (0.4%, 14.8%), whole from 100 up (672%)."""
    if value is None:
        return "—"
    number = float(value)
    if abs(number) >= 100:
        return f"{number:,.0f}%"
    return f"{number:.1f}".removesuffix(".0") + "%"
