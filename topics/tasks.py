"""Celery tasks for topics: thin adapters over the domain functions."""
from __future__ import annotations

from celery import shared_task
from celery.signals import worker_init

from .discovery import run_discovery
from .material import gather_material
from .models import Topic
from .pages import warm_up


@shared_task(name="topics.discover")
def discover_topics(limit: int = 50) -> int:
    """Periodic discovery (a django-celery-beat schedule seeded by batches migration 0004, editable in the admin). Returns the run's id."""
    return run_discovery(limit=limit).pk


@shared_task(name="topics.gather_material")
def gather_material_task(topic_id: int) -> int:
    """Fetch a topic's source material ahead of drafting (the admin's "Fetch source material"). Returns how many
    documents the topic has now; a topic deleted meanwhile has none."""
    topic = Topic.objects.filter(pk=topic_id).first()
    if topic is None:
        return 0
    return len(gather_material(topic=topic, refresh=True).documents)


@worker_init.connect
def prepare_page_reader(**kwargs) -> None:
    """In the worker's parent process, before it forks its pool: each pool process then starts with the page
    reader ready instead of paying for it on its first page (material is gathered on every worker slot at once)."""
    warm_up()
