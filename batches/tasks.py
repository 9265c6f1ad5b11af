"""Celery tasks: thin adapters that load by primary key and call one domain function."""
from __future__ import annotations

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from . import economy, running, sweeper
from .generation import claim, draft_claimed, replay_spool
from .models import Batch, Newsletter
from .spool import pending as spooled_answers


@shared_task(name="batches.run_batch")
def run_batch(batch_id: int) -> None:
    """Select the batch's topics, then fan out one generation task per item over the workers (or, for an economy
    batch, reserve and submit its one Message Batch)."""
    if Batch.objects.filter(pk=batch_id, delivery=Batch.Delivery.ECONOMY).exists():
        economy.submit(batch_id=batch_id)
        return
    batch = running.start_batch(batch_id=batch_id)
    if batch is None:
        # Already claimed: this may be a redelivery after the first run died before fanning out. Fanning out
        # again is harmless, since an item can only be claimed once, so any item still pending goes out now.
        batch = Batch.objects.filter(pk=batch_id, status=Batch.Status.RUNNING).first()
    if batch is None or batch.is_finished:
        return
    item_ids = running.open_item_ids(batch_id=batch_id)
    Newsletter.objects.filter(pk__in=item_ids).update(queued_at=timezone.now())
    for newsletter_id in item_ids:
        transaction.on_commit(lambda pk=newsletter_id: generate_newsletter_task.delay(pk))
    if not item_ids:
        running.finalize_batch(batch_id=batch_id)  # resumed with nothing left to draft, or every item ended


@shared_task(name="batches.generate_newsletter", bind=True)
def generate_newsletter_task(self, newsletter_id: int) -> None:
    if spooled_answers():
        replay_spool()  # answers kept through a database outage land before anything new is drafted
    newsletter = claim(newsletter_id=newsletter_id, token=self.request.id or "")  # never an economy item
    if newsletter is None:
        # Not this run's to draft: finished, held by another run, deleted, or an economy item (drafted inside its
        # Message Batch). A `now` batch whose last item this was may still need closing.
        batch_id, delivery = Newsletter.objects.filter(pk=newsletter_id) \
            .values_list("batch_id", "batch__delivery").first() or (None, None)
        if batch_id is not None and delivery != Batch.Delivery.ECONOMY:
            running.finalize_batch(batch_id=batch_id)
        return
    try:
        draft_claimed(newsletter=newsletter, token=self.request.id or "")
    finally:
        # Even after an unexpected error (the item is marked failed first) the batch must be able to close.
        running.finalize_batch(batch_id=newsletter.batch_id)


@shared_task(name="batches.sweep", ignore_result=True)
def sweep() -> dict:
    """Every minute (a django-celery-beat schedule): take back and republish whatever a fault left behind."""
    return sweeper.sweep().as_dict()


@shared_task(name="batches.poll_economy", ignore_result=True)
def poll_economy() -> dict:
    """Every minute (a django-celery-beat schedule): ask Anthropic about the economy batches that are due."""
    outcomes: dict[str, str] = {}
    for batch_id in economy.due_submissions():
        outcomes[str(batch_id)] = economy.poll(batch_id=batch_id)
    return outcomes
