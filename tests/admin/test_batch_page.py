"""The batch page: live progress, per-item status and cost, the budget gauge, errors in plain words."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from batches.models import Batch, Newsletter
from batches.progress import explain_error
from tests.admin.conftest import csrf_client


def page_url(batch) -> str:
    return reverse("admin:batches_batch_change", args=[batch.pk])


def progress_url(batch) -> str:
    return reverse("admin:batches_batch_progress", args=[batch.pk])


def test_the_batch_page_shows_items_done_out_of_the_total(editor_client, make_batch):
    batch = make_batch(["generated", "generated", "generating", "pending"])
    response = editor_client.get(page_url(batch))
    assert response.status_code == 200
    progress = response.context["progress"]
    assert (progress.done, progress.total, progress.percent) == (2, 4, 50)
    page = response.content.decode()
    assert 'id="desk-done">2<' in page and 'id="desk-total">4<' in page
    assert 'aria-valuenow="50"' in page


def test_the_batch_page_and_list_show_times_in_the_desks_time_zone_with_the_zone(editor_client, make_batch, settings):
    from datetime import UTC, datetime

    settings.TIME_ZONE = "Europe/Berlin"
    batch = make_batch(["generated"])
    Batch.objects.filter(pk=batch.pk).update(created_at=datetime(2026, 7, 1, 8, 30, tzinfo=UTC))

    page = editor_client.get(page_url(batch)).content.decode()
    listing = editor_client.get(reverse("admin:batches_batch_changelist")).content.decode()

    assert "1 Jul 2026, 10:30 CEST" in page
    assert "1 Jul 2026, 10:30 CEST" in listing


def test_the_batch_page_shows_each_items_status_and_cost(editor_client, make_batch):
    batch = make_batch(["generated", "failed"], cost="0.031200", error="Anthropic API answered 529 overloaded_error")
    page = editor_client.get(page_url(batch)).content.decode()
    drafted, failed = batch.newsletters.order_by("position")
    assert drafted.subject in page and "$0.0312" in page
    assert "Draft ready" in page and "Failed" in page


def test_the_batch_page_shows_spend_against_the_budget_as_a_gauge(editor_client, make_batch):
    batch = make_batch(["generated", "generated"], budget="0.10", cost="0.025000")
    response = editor_client.get(page_url(batch))
    assert response.context["progress"].budget_percent == 50
    page = response.content.decode()
    assert 'id="desk-gauge"' in page and 'stroke-dasharray="50.0 100"' in page
    assert "$<span id=\"desk-spent\">0.0500</span> of $<span id=\"desk-budget\">0.10</span>" in page


def test_a_running_batch_page_polls_its_status_view(editor_client, make_batch):
    batch = make_batch(["generating"], status=Batch.Status.RUNNING)
    page = editor_client.get(page_url(batch)).content.decode()
    assert f'data-url="{progress_url(batch)}"' in page and 'data-live="true"' in page
    assert "Updating live" in page and "window.setTimeout(poll" in page


def test_a_finished_batch_page_does_not_poll(editor_client, make_batch):
    batch = make_batch(["generated"], status=Batch.Status.DONE)
    page = editor_client.get(page_url(batch)).content.decode()
    assert 'data-finished="true" data-live="false"' in page
    assert "if (state.live) { window.setTimeout(poll" in page  # the script polls only while there is news


def test_a_finished_batch_with_an_item_drafted_again_is_watched_until_the_item_ends(editor_client, make_batch):
    batch = make_batch(["generated", "pending"], status=Batch.Status.DONE)
    assert editor_client.get(progress_url(batch)).json()["live"] is True
    batch.newsletters.filter(status="pending").update(status="generated")
    assert editor_client.get(progress_url(batch)).json()["live"] is False


def test_the_status_view_reports_progress_and_money_as_strings(editor_client, make_batch):
    batch = make_batch(["generated", "pending"], budget="40", cost="0.012500")
    data = editor_client.get(progress_url(batch)).json()
    assert data["status"] == "running" and data["finished"] is False
    assert (data["done"], data["total"]) == (1, 2)
    assert data["spent_usd"] == "0.012500" and data["budget_usd"] == "40.000000"
    assert [item["status"] for item in data["items"]] == ["generated", "pending"]
    assert data["items"][0]["cost_usd"] == "0.012500"


def test_the_status_view_counts_an_open_reservation_as_spent(editor_client, make_batch):
    batch = make_batch(["generating"])
    data = editor_client.get(progress_url(batch)).json()
    assert data["spent_usd"] == "0.050000"
    assert data["items"][0]["cost_usd"] == "0.050000"


def test_the_status_view_is_not_cached(editor_client, make_batch):
    response = editor_client.get(progress_url(make_batch(["pending"])))
    assert "no-store" in response["Cache-Control"]


def test_a_failed_item_is_explained_in_words_an_editor_understands(editor_client, make_batch):
    technical = "Gave up after 4 attempts: Anthropic API answered 529 overloaded_error: Overloaded"
    batch = make_batch(["failed"], status=Batch.Status.FAILED, error=technical)
    item = editor_client.get(progress_url(batch)).json()["items"][0]
    assert item["problem"].startswith("Claude was overloaded")
    assert item["detail"] == technical
    assert "Claude was overloaded" in editor_client.get(page_url(batch)).content.decode()


@pytest.mark.parametrize("status, error, words", [
    ("failed", "Anthropic API answered 401 authentication_error: invalid x-api-key", "refused our API key"),
    ("failed", "Anthropic API answered 402 billing_error: Your credit balance is too low", "run out of credit"),
    ("failed", "Gave up after 4 attempts: Anthropic API did not answer within 120 s", "did not answer in time"),
    ("failed", "The model's answer was not a usable draft: the answer was cut off at max_tokens.", "not with a usable"),
    ("failed", "No price for model claude-x in the price table", "no price for this model"),
    ("skipped_budget", "Not drafted: Batch budget reached: $39.9 spent", "batch's budget ran out"),
    ("skipped_budget", "Not drafted: Monthly cap reached: $99 spent", "this month's spending cap"),
])
def test_each_kind_of_problem_has_its_own_explanation(status, error, words):
    assert words in explain_error(status=status, error=error)


def test_a_drafted_item_has_no_problem_to_explain():
    assert explain_error(status=Newsletter.Status.GENERATED, error="") == ""


@pytest.mark.parametrize("hostile", ["<script>alert('x')</script>", '"><img src=x onerror=alert(1)>'])
def test_a_hostile_topic_title_is_shown_as_text_on_the_batch_page(editor_client, make_batch, hostile):
    batch = make_batch(["generated"], titles=[hostile])
    page = editor_client.get(page_url(batch)).content.decode()
    assert hostile not in page
    assert editor_client.get(progress_url(batch)).json()["items"][0]["title"] == hostile


def test_the_page_script_writes_titles_as_text_never_as_html(editor_client, make_batch):
    page = editor_client.get(page_url(make_batch(["pending"]))).content.decode()
    script = page[page.index("(function () {"):]
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "textContent" in script


def count_queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_batch_page_query_count_does_not_grow_with_the_items(editor_client, make_batch):
    small = make_batch(["generated", "failed"])
    large = make_batch(["generated", "failed", "pending", "generating"] * 6)
    editor_client.get(page_url(small))  # warm the session and permission caches alike for both
    assert count_queries(editor_client, page_url(small)) == count_queries(editor_client, page_url(large))


def test_the_status_view_query_count_does_not_grow_with_the_items(editor_client, make_batch):
    small = make_batch(["generated"])
    large = make_batch(["generated", "pending", "failed"] * 10)
    editor_client.get(progress_url(small))
    assert count_queries(editor_client, progress_url(small)) == count_queries(editor_client, progress_url(large))


def test_the_batch_list_query_count_does_not_grow_with_the_batches(editor_client, make_batch):
    changelist = reverse("admin:batches_batch_changelist")
    make_batch(["generated"])
    editor_client.get(changelist)
    few = count_queries(editor_client, changelist)
    for _ in range(5):
        make_batch(["generated", "failed", "pending"])
    assert count_queries(editor_client, changelist) == few


def test_the_batch_list_shows_items_done_and_spend_without_double_counting(editor_client, make_batch):
    make_batch(["generated", "generated", "pending"], cost="0.010000")
    page = editor_client.get(reverse("admin:batches_batch_changelist")).content.decode()
    assert "2 / 3" in page
    assert "0.020000" in page


def test_the_status_view_needs_permission_to_view_batches(db, make_batch):
    from django.contrib.auth.models import User

    outsider = User.objects.create_user("outsider", password="x", is_staff=True)
    response = csrf_client(outsider).get(progress_url(make_batch(["pending"])))
    assert response.status_code == 403


def test_a_user_without_run_batch_sees_no_resume_button(viewer_client, make_batch):
    batch = make_batch(["failed"], status=Batch.Status.FAILED)
    page = viewer_client.get(page_url(batch)).content.decode()
    assert 'id="desk-resume"' not in page


def test_an_editor_sees_the_resume_button_on_a_failed_batch(editor_client, make_batch):
    batch = make_batch(["failed"], status=Batch.Status.FAILED)
    page = editor_client.get(page_url(batch)).content.decode()
    assert f'href="{reverse("admin:batches_batch_resume", args=[batch.pk])}" id="desk-resume">' in page
