"""Celery tasks for topics: thin adapters over the domain functions."""
from __future__ import annotations

from celery import shared_task

from .discovery import run_discovery


@shared_task(name="topics.discover")
def discover_topics(limit: int = 50) -> int:
    """Periodic discovery (a django-celery-beat schedule seeded by batches migration 0004, editable in the admin). Returns the run's id."""
    return run_discovery(limit=limit).pk
