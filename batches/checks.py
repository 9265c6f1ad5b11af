"""System checks on the settings that recovery depends on: the lease, the task time limits, the broker's
visibility timeout. A mismatch here means a slow call can be drafted (and paid for) twice, so start-up refuses it."""
from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register


@register()
def check_lease_and_time_limits(app_configs=None, **kwargs) -> list[Error]:
    errors = []
    lease = settings.ITEM_LEASE_SECONDS
    hard, soft = settings.CELERY_TASK_TIME_LIMIT, settings.CELERY_TASK_SOFT_TIME_LIMIT
    visibility = (settings.CELERY_BROKER_TRANSPORT_OPTIONS or {}).get("visibility_timeout")
    if visibility is not None and visibility < hard:
        errors.append(Error(
            f"CELERY_VISIBILITY_TIMEOUT ({visibility} s) is shorter than CELERY_TASK_TIME_LIMIT ({hard} s): the "
            "broker would hand a task that is still running to a second worker, and the same draft would be made "
            "and paid for twice.",
            hint=f"Set CELERY_VISIBILITY_TIMEOUT to at least {hard}.", id="batches.E001",
        ))
    if lease >= hard:
        errors.append(Error(
            f"ITEM_LEASE_SECONDS ({lease} s) is not shorter than CELERY_TASK_TIME_LIMIT ({hard} s): a task killed at "
            "its time limit would leave its item leased, and the lease must run out before the task is killed.",
            hint=f"Set ITEM_LEASE_SECONDS below {hard}, or raise CELERY_TASK_TIME_LIMIT.", id="batches.E002",
        ))
    if soft > hard:
        errors.append(Error(
            f"CELERY_TASK_SOFT_TIME_LIMIT ({soft} s) is above CELERY_TASK_TIME_LIMIT ({hard} s).",
            hint="The soft limit must come first.", id="batches.E003",
        ))
    # A token count and one call, each up to the timeout, then the answer's write and the margin before the lease.
    shortest_useful = 2 * settings.ANTHROPIC_TIMEOUT_SECONDS + settings.ANSWER_WRITE_RETRY_SECONDS + 5
    if lease < shortest_useful:
        errors.append(Error(
            f"ITEM_LEASE_SECONDS ({lease} s) leaves no time for a token count and one call (ANTHROPIC_TIMEOUT_SECONDS "
            f"{settings.ANTHROPIC_TIMEOUT_SECONDS:g} s) and writing its answer (ANSWER_WRITE_RETRY_SECONDS "
            f"{settings.ANSWER_WRITE_RETRY_SECONDS:g} s).",
            hint=f"Set ITEM_LEASE_SECONDS to at least {shortest_useful:g}.", id="batches.E004",
        ))
    return errors
