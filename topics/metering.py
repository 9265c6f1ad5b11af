"""Who meters discovery's paid calls. The app that keeps the money plugs its meter in when it starts
(batches.apps names batches.metering.LedgerMeter), so topics never imports batches; until then every paid
call is refused. Kept tiny and import-free: every process pays for what ready() imports."""
from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from .sources.base import SpendHold, SpendMeter

_meter_path: str | None = None


def use_meter(path: str) -> None:
    """Meter every later discovery run's paid calls with an instance of the class at dotted `path`."""
    global _meter_path
    _meter_path = path


def current_meter() -> SpendMeter:
    return import_string(_meter_path)() if _meter_path else NoLedger()


class NoLedger:
    """The meter used while no app has plugged one in: every paid call is refused."""

    def reserve(self, *, provider: str, description: str, worst_case_usd: Decimal, idempotency_key: str) -> SpendHold:
        from .sources import BudgetRefused

        raise BudgetRefused("no cost ledger is installed, so no paid call can be recorded")
