"""The desk's side of economy batches: both deliveries on the confirmation page, the batch page's line at Anthropic
and its Cancel button (run_batch permission, POST, CSRF)."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from batches import economy, running
from batches.models import Batch, EconomySubmission
from tests.admin.conftest import csrf_client
from tests.admin.test_run_batch import RUN_URL, confirm_data, preview
from batches.claude_standin_batches import batches_of


@pytest.fixture
def api(fake_anthropic, settings):
    settings.ECONOMY_POLL_MIN_SECONDS = settings.ECONOMY_POLL_MAX_SECONDS = 0
    batches = batches_of(fake_anthropic)
    batches.processing_seconds = 3600
    return batches


def submitted_batch() -> Batch:
    batch = running.create_batch(size=8, budget_usd=Decimal("40"), delivery=Batch.Delivery.ECONOMY)
    return economy.submit(batch_id=batch.pk)


def test_the_confirmation_page_offers_both_deliveries_with_both_estimates(editor_client, topics_in_every_category):
    response = preview(editor_client)

    now, cheap = response.context["deliveries"]
    assert (now["value"], cheap["value"]) == ("now", "economy")
    assert now["estimate"] == response.context["plan"].estimated_cost_usd
    assert cheap["estimate"] <= now["estimate"] * Decimal("0.5") + Decimal("0.0001") * 8
    html = response.content.decode()
    assert 'name="delivery" value="economy"' in html and f"${cheap['estimate']:.2f}" in html


def test_confirming_economy_queues_an_economy_batch(editor_client, post_form, topics_in_every_category,
                                                   redis_broker, settings):
    settings.ANTHROPIC_API_KEY = "sk-ant-test-0000000000000000wxyz"  # the Run page refuses what cannot authenticate
    page = preview(editor_client)

    post_form(editor_client, RUN_URL, confirm_data(page, delivery="economy"), page=RUN_URL)

    assert Batch.objects.get().delivery == Batch.Delivery.ECONOMY


def test_the_batch_page_shows_where_the_economy_batch_stands_at_anthropic(editor_client, api,
                                                                           topics_in_every_category):
    batch = submitted_batch()
    submitted_at = timezone.localtime(batch.economy.submitted_at)

    response = editor_client.get(reverse("admin:batches_batch_change", args=[batch.pk]))

    line = response.context["economy_line"]
    assert line == (f"with Anthropic since {submitted_at:%H:%M} · 0 of 8 back · expires tomorrow "
                    f"{timezone.localtime(batch.economy.expires_at):%H:%M}")
    assert line in response.content.decode()
    assert 'id="desk-economy-cancel"' in response.content.decode()


def test_the_cancel_button_cancels_with_anthropic(editor_client, post_form, api, topics_in_every_category):
    batch = submitted_batch()
    page = reverse("admin:batches_batch_change", args=[batch.pk])

    response = post_form(editor_client, reverse("admin:batches_batch_cancel_economy", args=[batch.pk]), {},
                         page=page)

    assert response.status_code == 302
    assert api.calls["cancel"] == 1
    assert EconomySubmission.objects.get(batch=batch).cancel_requested_at is not None


def test_cancel_is_refused_without_the_permission_a_get_or_a_csrf_token(viewer_client, editor, api,
                                                                        topics_in_every_category):
    batch = submitted_batch()
    url = reverse("admin:batches_batch_cancel_economy", args=[batch.pk])

    assert viewer_client.post(url).status_code == 403
    assert csrf_client(editor).get(url).status_code == 405
    assert csrf_client(editor).post(url).status_code == 403  # no CSRF token
    assert api.calls["cancel"] == 0
    assert 'id="desk-economy-cancel"' not in viewer_client.get(reverse("admin:batches_batch_change",
                                                                  args=[batch.pk])).content.decode()


# --- the page's polling keeps the economy line up to date --------------------------------------------------------


def progress_json(client, batch: Batch) -> dict:
    return client.get(reverse("admin:batches_batch_progress", args=[batch.pk])).json()


def test_the_progress_json_the_page_polls_carries_the_economy_line_as_it_moves(editor_client, api,
                                                                                topics_in_every_category):
    batch = submitted_batch()
    page_line = editor_client.get(reverse("admin:batches_batch_change", args=[batch.pk])).context["economy_line"]

    polled = progress_json(editor_client, batch)["economy"]
    assert polled["line"] == page_line
    assert (polled["back"], polled["total"], polled["cancelable"], polled["last_error"]) == (0, 8, True, "")

    api.not_found_after_create = 0
    for made in api.created():
        made.not_found_left = 1  # the next retrieve answers 404: the page shows the last poll's error
    economy.poll(batch_id=batch.pk, force=True)
    polled = progress_json(editor_client, batch)["economy"]
    assert "404" in polled["last_error"]
    assert polled["line"].startswith(page_line.split(" · expires")[0] + " · Anthropic has answered 404 since ")

    for made in api.created():
        made.ends_at = 0  # Anthropic has finished it
    economy.poll(batch_id=batch.pk, force=True)
    data = progress_json(editor_client, batch)
    assert data["finished"] is True
    assert data["economy"]["line"] == f"with Anthropic since {timezone.localtime(batch.economy.submitted_at):%H:%M} · " \
                                      "8 of 8 back"  # no expiry once it has ended
    assert (data["economy"]["back"], data["economy"]["cancelable"], data["economy"]["last_error"]) == (8, False, "")


def test_the_economy_line_says_a_queued_batch_waits_for_a_worker_to_submit_it(editor_client, api,
                                                                              topics_in_every_category):
    batch = running.create_batch(size=8, budget_usd=Decimal("40"), delivery=Batch.Delivery.ECONOMY)

    polled = progress_json(editor_client, batch)["economy"]

    assert polled["line"] == "waiting for a worker to submit it to Anthropic"
    assert polled["cancelable"] is False
    assert 'id="desk-economy-line">waiting for a worker' in editor_client.get(
        reverse("admin:batches_batch_change", args=[batch.pk])).content.decode()


def test_a_now_batch_has_no_economy_part_in_the_progress_json(editor_client, topics_in_every_category):
    batch = running.create_batch(size=8, budget_usd=Decimal("40"))

    assert progress_json(editor_client, batch)["economy"] is None
    assert 'id="desk-economy"' not in editor_client.get(
        reverse("admin:batches_batch_change", args=[batch.pk])).content.decode()


def test_a_batch_given_up_after_a_lasting_404_says_so_plainly_on_the_desk(editor_client, api, settings,
                                                                         topics_in_every_category):
    import datetime

    settings.ECONOMY_GONE_AFTER_SECONDS = 3600
    batch = submitted_batch()
    [made] = api.created()
    made.not_found_left = 10**6
    start = timezone.now()
    economy.poll(batch_id=batch.pk, force=True, now=start)
    assert "Anthropic has answered 404 since" in progress_json(editor_client, batch)["economy"]["line"]

    economy.poll(batch_id=batch.pk, force=True, now=start + datetime.timedelta(hours=2))

    data = progress_json(editor_client, batch)
    assert "given up: Anthropic answered 404 for it from" in data["economy"]["line"]
    assert "reservations kept" in data["economy"]["line"] and data["economy"]["cancelable"] is False
    assert "no longer knows the Message Batch" in data["status_reason"]
    # The editor reads what happened, not the 404 explanation meant for an unknown model.
    assert {item["problem"] for item in data["items"]} == {
        "Anthropic kept answering that it does not know this economy batch (404), so it was given up. The request "
        "may still have been billed, so its reservation stays counted as spent. Resume the batch to draft it now."}
    assert data["reserved_usd"] == data["spent_usd"] != "0.000000"
