"""How the desk shows a moment: in the desk's time zone (TIME_ZONE), with the zone, in one format."""
from __future__ import annotations

import datetime

from django.utils import formats, timezone


def desk_time(value: datetime.datetime | None) -> str:
    """'3 Dec 2026, 14:05 CET': the format of newsroom/formats, in the current time zone; '' for no time."""
    if not value:
        return ""
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    return formats.date_format(value, "DATETIME_FORMAT")

