"""Template helpers of the editor's desk: `{% load desk %}`, then `{{ amount|usd }}` (or `|usd:6` in the ledger)."""
from __future__ import annotations

from django import template
from django.conf import settings

from batches.money import SUMMARY_PLACES, format_percent, format_usd

register = template.Library()


@register.filter
def usd(amount, places=SUMMARY_PLACES) -> str:
    return format_usd(amount, places=int(places))


@register.filter
def percent(value) -> str:
    return format_percent(value)


@register.inclusion_tag("admin/batches/_standin_notice.html")
def standin_notice() -> dict:
    """The banner every desk page shows while drafts come from the local stand-in instead of Claude."""
    return {"claude_standin": settings.CLAUDE_STANDIN, "standin_port": settings.STANDIN_PORT}
