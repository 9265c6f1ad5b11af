"""'Run batch' on batches: resume or re-run a failed or stopped batch, after a confirmation page."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from batches.models import Batch, Newsletter
from tests.admin.conftest import csrf_client, queued_tasks

CHANGELIST = reverse("admin:batches_batch_changelist")


def resume_url(batch) -> str:
    return reverse("admin:batches_batch_resume", args=[batch.pk])


def test_the_run_batch_action_on_a_stopped_batch_opens_its_resume_page(editor_client, run_action, make_batch):
    batch = make_batch(["generated", "skipped_budget"], status=Batch.Status.BUDGET_EXHAUSTED)
    response = run_action(editor_client, CHANGELIST, "run_batch", [batch.pk])
    assert response.status_code == 302 and response["Location"] == resume_url(batch)


def test_the_run_batch_action_leaves_a_finished_batch_alone(editor_client, run_action, make_batch):
    batch = make_batch(["generated"], status=Batch.Status.DONE)
    response = run_action(editor_client, CHANGELIST, "run_batch", [batch.pk])
    messages = [str(m) for m in editor_client.get(response["Location"]).context["messages"]]
    assert any("cannot be resumed" in m for m in messages)


def test_the_run_batch_action_takes_one_batch_at_a_time(editor_client, run_action, make_batch):
    ids = [make_batch(["failed"], status=Batch.Status.FAILED).pk for _ in range(2)]
    response = run_action(editor_client, CHANGELIST, "run_batch", ids)
    messages = [str(m) for m in editor_client.get(response["Location"]).context["messages"]]
    assert any("one batch at a time" in m for m in messages)


def test_the_resume_page_lists_the_items_to_draft_again_and_their_cost(editor_client, make_batch):
    batch = make_batch(["generated", "failed", "skipped_budget"], status=Batch.Status.BUDGET_EXHAUSTED, error="x")
    response = editor_client.get(resume_url(batch))
    redo = [item.topic.pk for item in response.context["plan"].items]
    assert redo == list(batch.newsletters.exclude(status="generated").order_by("position").values_list("topic",
                                                                                                       flat=True))
    assert response.context["plan"].estimated_cost_usd > 0
    assert "raise the budget" in response.content.decode()


def test_the_resume_page_warns_about_a_topic_another_batch_has_drafted_since(editor_client, make_batch):
    from batches.models import Newsletter as Item

    batch = make_batch(["failed"], status=Batch.Status.FAILED)
    topic = batch.newsletters.get().topic
    other = make_batch([], status=Batch.Status.DONE)
    Item.objects.create(batch=other, topic=topic, status=Item.Status.GENERATED)
    response = editor_client.get(resume_url(batch))
    assert [n.topic_id for n in response.context["resume_plan"].taken_elsewhere] == [topic.pk]
    assert "Another batch has drafted 1 of these topics" in response.content.decode()


def test_the_resume_page_offers_the_current_budget_as_it_was_set(editor_client, make_batch):
    batch = make_batch(["failed"], status=Batch.Status.FAILED, budget="12.5")
    assert 'value="12.5"' in editor_client.get(resume_url(batch)).content.decode()


def test_resuming_puts_failed_and_skipped_items_back_in_line_and_queues_the_batch(
    editor_client, post_form, make_batch, redis_broker, django_capture_on_commit_callbacks
):
    batch = make_batch(["generated", "failed", "skipped_budget"], status=Batch.Status.BUDGET_EXHAUSTED, error="x")
    with django_capture_on_commit_callbacks(execute=True):
        response = post_form(editor_client, resume_url(batch), {"budget_usd": "40"}, page=resume_url(batch))
    batch.refresh_from_db()
    assert response.status_code == 302
    assert batch.status == Batch.Status.QUEUED
    assert sorted(batch.newsletters.values_list("status", flat=True)) == ["generated", "pending", "pending"]
    assert queued_tasks(redis_broker) == ["batches.run_batch"]


def test_resuming_can_raise_the_budget(editor_client, post_form, make_batch, redis_broker,
                                       django_capture_on_commit_callbacks):
    batch = make_batch(["generated", "skipped_budget"], status=Batch.Status.BUDGET_EXHAUSTED, budget="0.02")
    with django_capture_on_commit_callbacks(execute=True):
        post_form(editor_client, resume_url(batch), {"budget_usd": "5.00"}, page=resume_url(batch))
    batch.refresh_from_db()
    assert batch.budget_usd == Decimal("5") and batch.status == Batch.Status.QUEUED


def test_the_budget_cannot_go_below_what_the_batch_has_spent(editor_client, post_form, make_batch):
    batch = make_batch(["generated", "failed"], status=Batch.Status.PARTIAL, cost="0.500000")
    response = post_form(editor_client, resume_url(batch), {"budget_usd": "0.10"}, page=resume_url(batch))
    batch.refresh_from_db()
    assert batch.status == Batch.Status.PARTIAL and batch.budget_usd == Decimal("40")
    assert any("already spent" in str(m) for m in response.context["messages"])


def test_a_dry_run_of_a_resume_changes_nothing(editor_client, post_form, make_batch):
    batch = make_batch(["failed"], status=Batch.Status.FAILED)
    response = post_form(editor_client, resume_url(batch), {"budget_usd": "40", "dry_run": "on"},
                         page=resume_url(batch))
    assert response.status_code == 200
    assert batch.newsletters.get().status == Newsletter.Status.FAILED
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FAILED


def test_a_batch_that_failed_before_choosing_topics_is_re_run_with_a_fresh_selection(
    editor_client, make_batch, topics_in_every_category
):
    batch = make_batch([], status=Batch.Status.FAILED)
    response = editor_client.get(resume_url(batch))
    assert response.context["resume_plan"].reselect is True
    assert len(response.context["plan"].items) == 1  # the batch's own size


@pytest.mark.django_db(transaction=True)
def test_resuming_with_the_broker_down_puts_the_items_back_as_they_were(editor, post_form, make_batch, broker_down):
    client = csrf_client(editor)
    batch = make_batch(["generated", "failed", "skipped_budget"], status=Batch.Status.BUDGET_EXHAUSTED,
                       error="Anthropic API answered 529 overloaded_error")
    response = post_form(client, resume_url(batch), {"budget_usd": "40"}, page=resume_url(batch))
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FAILED and "broker is unreachable" in batch.status_reason
    assert sorted(batch.newsletters.values_list("status", flat=True)) == ["failed", "generated", "skipped_budget"]
    assert batch.newsletters.get(status="failed").error == "Anthropic API answered 529 overloaded_error"
    # and their topics with them: the drafted one stays drafted, the others are offered again
    assert sorted(batch.newsletters.values_list("topic__usage", flat=True)) == ["drafted", "unused", "unused"]
    messages = [str(m) for m in client.get(response["Location"]).context["messages"]]
    assert any("broker is unreachable" in m for m in messages)


def test_resuming_without_run_batch_is_forbidden(viewer_client, post_form, make_batch):
    batch = make_batch(["failed"], status=Batch.Status.FAILED)
    viewer_client.get(reverse("admin:batches_batch_change", args=[batch.pk]))
    assert viewer_client.get(resume_url(batch)).status_code == 403
    response = viewer_client.post(resume_url(batch), {"budget_usd": "40",
                                                      "csrfmiddlewaretoken": viewer_client.cookies["csrftoken"].value})
    assert response.status_code == 403
    assert batch.newsletters.get().status == Newsletter.Status.FAILED


def strand(batch, *, minutes: int = 10) -> None:
    """Leave the batch as a crash would: its drafting items' leases ran out and nothing has moved for a while."""
    from datetime import timedelta

    from django.utils import timezone

    long_ago = timezone.now() - timedelta(minutes=minutes)
    Batch.objects.filter(pk=batch.pk).update(created_at=long_ago, queued_at=long_ago, started_at=long_ago)
    batch.newsletters.filter(status=Newsletter.Status.GENERATING).update(lease_expires_at=long_ago, claimed_at=long_ago)


def test_a_running_batch_left_stranded_says_so_and_can_be_resumed(
    editor_client, post_form, make_batch, redis_broker, django_capture_on_commit_callbacks
):
    batch = make_batch(["generated", "generating", "pending"], status=Batch.Status.RUNNING)
    strand(batch)

    page = editor_client.get(reverse("admin:batches_batch_change", args=[batch.pk])).content.decode()
    assert 'id="desk-stuck"' in page and "resume it now" in page
    assert editor_client.get(resume_url(batch)).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = post_form(editor_client, resume_url(batch), {"budget_usd": "40"}, page=resume_url(batch))

    batch.refresh_from_db()
    assert response.status_code == 302 and batch.status == Batch.Status.QUEUED
    assert sorted(batch.newsletters.values_list("status", flat=True)) == ["generated", "pending", "pending"]
    assert queued_tasks(redis_broker) == ["batches.run_batch"]


def test_a_running_batch_with_a_live_lease_cannot_be_resumed(editor_client, make_batch):
    from datetime import timedelta

    from django.utils import timezone

    batch = make_batch(["generating", "pending"], status=Batch.Status.RUNNING)
    strand(batch)
    batch.newsletters.filter(status="generating").update(lease_expires_at=timezone.now() + timedelta(minutes=5))

    response = editor_client.get(resume_url(batch), follow=True)

    assert "being drafted right now" in response.content.decode()
    assert 'id="desk-stuck"' not in response.content.decode()
