"""The Celery application, wired the standard way for Django (settings under the CELERY_ namespace)."""
import os

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
