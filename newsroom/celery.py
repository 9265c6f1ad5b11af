"""The Celery application, wired the standard way for Django (settings under the CELERY_ namespace)."""
import os
import sys

from celery import Celery
from celery.signals import beat_init, worker_init

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
