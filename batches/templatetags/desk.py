"""Template helpers of the editor's desk: `{% load desk %}`, then `{{ amount|usd }}` (or `|usd:6` in the ledger)."""
from __future__ import annotations

from django import template
from django.conf import settings

from batches.money import SUMMARY_PLACES, format_percent, format_usd
from newsroom.formatting import desk_time

register = template.Library()
# `{{ batch.created_at|desk_time }}`: a moment in the desk's time zone, with the zone, in one format.
register.filter("desk_time", desk_time, expects_localtime=False)


@register.filter
def usd(amount, places=SUMMARY_PLACES) -> str:
    return format_usd(amount, places=int(places))


@register.filter
def percent(value) -> str:
    return format_percent(value)


@register.simple_tag(takes_context=True)
def desk_waiting(context) -> dict:
    """What waits for the editor, for the desk index: topics and drafts to review, batches running (3 counts,
    each exact up to 10,000 and "more than 10,000" past it: counting a million unreviewed topics is a scan)."""
    from newsroom.admin_lists import bounded_count, index_order_reads
    from topics.models import Topic

    from batches.models import Batch, Newsletter

    user = context["request"].user
    waiting = {}
    with index_order_reads(Topic.objects.db):  # each count walks its own index, in its order (admin_lists)
        if user.has_perm("topics.view_topic"):
            waiting["topics"] = bounded_count(Topic.objects.filter(status=Topic.Status.NEW).order_by("-score", "-id"))
        if user.has_perm("batches.view_newsletter"):
            waiting["drafts"] = bounded_count(Newsletter.objects.filter(status=Newsletter.Status.GENERATED))
    if user.has_perm("batches.view_batch"):
        # A finished batch with an item being drafted again is running too: the batches that are running, and
        # those of the items being drafted (a few, through the status index).
        running = set(Batch.objects.filter(status__in=[Batch.Status.PENDING, Batch.Status.QUEUED,
                                                       Batch.Status.RUNNING]).values_list("pk", flat=True))
        running.update(Newsletter.objects.filter(status__in=Newsletter.OPEN_STATUSES)
                       .values_list("batch_id", flat=True).distinct())
        waiting["batches"] = len(running)
    return waiting


@register.inclusion_tag("admin/batches/_standin_notice.html")
def standin_notice() -> dict:
    """The banner every desk page shows while drafts come from the local stand-in instead of Claude."""
    return {"claude_standin": settings.CLAUDE_STANDIN, "standin_port": settings.STANDIN_PORT}
