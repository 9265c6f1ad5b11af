"""The worker's database connections between tasks (newsroom/celery.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery import states

from newsroom import celery as worker


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    made: list[str] = []
    monkeypatch.setattr("django.db.close_old_connections", lambda: made.append("close old"))
    monkeypatch.setattr("django.db.connections.close_all", lambda: made.append("close all"))
    return made


def task(*, eager: bool = False) -> SimpleNamespace:
    return SimpleNamespace(request=SimpleNamespace(is_eager=eager))


def test_a_task_that_succeeded_keeps_its_connection_as_a_request_would(calls):
    worker.connections_before_task(task=task())
    worker.connections_after_task(task=task(), state=states.SUCCESS)

    assert calls == ["close old", "close old"]  # CONN_MAX_AGE and the health check decide


@pytest.mark.parametrize("state", [states.FAILURE, states.RETRY, states.REJECTED])
def test_a_task_that_did_not_succeed_closes_its_connection(calls, state):
    worker.connections_after_task(task=task(), state=state)

    assert calls == ["close all"]  # it may have been stopped mid-query


def test_eager_tasks_leave_the_connection_alone(calls):
    worker.connections_before_task(task=task(eager=True))
    worker.connections_after_task(task=task(eager=True), state=states.FAILURE)

    assert calls == []


def test_the_fixup_no_longer_closes_the_connection_after_every_task(settings):
    from newsroom.celery import app

    assert app.conf.get("CELERY_DB_REUSE_MAX") == settings.CELERY_DB_REUSE_MAX >= 100


def test_a_prefork_child_freezes_what_it_inherited_once_started():
    import gc

    from celery.signals import worker_process_init

    from newsroom.celery import freeze_after_start

    assert any(receiver() is freeze_after_start for _, receiver in worker_process_init.receivers)
    before = gc.get_freeze_count()
    try:
        worker_process_init.send(sender=None)
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()  # this test process goes on collecting as before
