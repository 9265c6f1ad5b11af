"""The Celery application, wired the standard way for Django (settings under the CELERY_ namespace)."""
import gc
import os
import sys

from celery import Celery, states
from celery.signals import beat_init, task_postrun, task_prerun, worker_init, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "newsroom.settings")

app = Celery("newsroom")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
@beat_init.connect
def refuse_to_start_misconfigured(**kwargs) -> None:
    """Celery runs Django's system checks but only logs their errors; a worker whose visibility timeout or lease
    is wrong would draft (and pay for) the same newsletter twice, so it does not start at all."""
    from django.core.checks import run_checks

    serious = [error for error in run_checks() if error.is_serious()]
    if serious:
        raise SystemExit("Refusing to start: " + " ".join(f"{e.id}: {e.msg}" for e in serious))


@worker_process_init.connect
def freeze_after_start(**kwargs) -> None:
    """A prefork child, once forked: what it inherited is the app's long-lived objects; out of the cycle collector's
    way they stay shared with the parent (no copy-on-write from collections) and no full collection walks them
    (newsroom.startup says why). Only gc.freeze, which is instant: a child must report up within seconds."""
    gc.freeze()


@task_prerun.connect
def connections_before_task(task=None, **kwargs) -> None:
    """As before a request: close a connection past CONN_MAX_AGE, and health-check the kept one at its first query
    (CELERY_DB_REUSE_MAX keeps the fixup from closing it after every task)."""
    if task is not None and not getattr(task.request, "is_eager", False):
        from django.db import close_old_connections

        close_old_connections()


@task_postrun.connect
def connections_after_task(task=None, state=None, **kwargs) -> None:
    """Keep the connection only after a task that succeeded: one that raised, retried or hit its time limit may
    have been stopped mid-query, leaving a connection Django would still take for usable (Celery's reason for
    closing after every task)."""
    if task is None or getattr(task.request, "is_eager", False):
        return
    from django.db import close_old_connections, connections

    if state == states.SUCCESS:
        close_old_connections()
    else:
        connections.close_all()


def _settings_or_exit() -> None:
    """Under the `celery` command, a bad setting is one line on stderr and exit 1, as with manage.py, instead of a
    traceback through Celery's command-line parsing (which loads the settings)."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        settings.INSTALLED_APPS  # noqa: B018 -- the first setting read loads them all, here where an error is one line
    except ImproperlyConfigured as exc:
        sys.exit(f"Configuration error: {' '.join(str(exc).split())}")


if os.path.basename(sys.argv[0]) == "celery" or sys.argv[0].endswith(os.path.join("celery", "__main__.py")):
    _settings_or_exit()
