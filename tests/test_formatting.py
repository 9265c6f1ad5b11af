"""Times on the desk: in TIME_ZONE, with the zone, in one format."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.template import Context, Template

from newsroom.formatting import desk_time

MOMENT = datetime(2026, 12, 3, 13, 5, tzinfo=UTC)


@pytest.mark.parametrize(("zone", "shown"), [
    ("UTC", "3 Dec 2026, 13:05 UTC"),
    ("Europe/Berlin", "3 Dec 2026, 14:05 CET"),
    ("America/New_York", "3 Dec 2026, 08:05 EST"),
])
def test_a_moment_is_shown_in_the_desks_time_zone_with_the_zone(settings, zone, shown):
    settings.TIME_ZONE = zone

    assert desk_time(MOMENT) == shown


def test_no_moment_is_shown_as_nothing():
    assert desk_time(None) == ""


def test_templates_show_a_moment_the_same_way_with_the_filter_and_without(settings):
    settings.TIME_ZONE = "Europe/Berlin"

    rendered = Template("{% load desk %}{{ when|desk_time }} | {{ when }}").render(Context({"when": MOMENT}))

    assert rendered == "3 Dec 2026, 14:05 CET | 3 Dec 2026, 14:05 CET"
