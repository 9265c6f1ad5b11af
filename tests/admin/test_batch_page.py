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


def test_the_batch_page_shows_items_finished_out_of_the_total(editor_client, make_batch):
    batch = make_batch(["generated", "generated", "generating", "pending"])
    response = editor_client.get(page_url(batch))
    assert response.status_code == 200
    progress = response.context["progress"]
    assert (progress.done, progress.total, progress.percent) == (2, 4, 50)
    page = response.content.decode()
    assert 'id="desk-done">2<' in page and 'id="desk-total">4<' in page
    assert 'aria-valuenow="50"' in page
    assert "2 drafted · 0 failed · 0 skipped · 2 in progress" in page


def test_the_batch_page_counts_drafted_failed_and_skipped_items_apart(editor_client, make_batch):
    batch = make_batch(["generated"] * 6 + ["failed", "skipped_budget"], status=Batch.Status.BUDGET_EXHAUSTED)
    data = editor_client.get(progress_url(batch)).json()
    assert data["counts_label"] == "6 drafted · 1 failed · 1 skipped"
    assert (data["drafted"], data["failed"], data["skipped"], data["in_flight"]) == (6, 1, 1, 0)
    assert "6 drafted · 1 failed · 1 skipped" in editor_client.get(page_url(batch)).content.decode()


def test_a_batch_whose_items_all_failed_never_reads_as_done(editor_client, make_batch):
    batch = make_batch(["generated", "failed", "failed", "failed"], status=Batch.Status.PARTIAL)
    page = editor_client.get(page_url(batch)).content.decode()
    assert "1 drafted · 3 failed · 0 skipped" in page
    assert ">Done<" not in page


def test_a_finished_batch_with_an_item_drafted_again_shows_as_running(editor_client, make_batch):
    batch = make_batch(["generated", "pending"], status=Batch.Status.DONE)
    data = editor_client.get(progress_url(batch)).json()
    assert (data["status"], data["status_label"], data["finished"]) == ("running", "Running", False)
    page = editor_client.get(page_url(batch)).content.decode()
    assert 'class="desk-pill status-running">Running<' in page
    listing = editor_client.get(reverse("admin:batches_batch_changelist")).content.decode()
    assert '<td class="field-shown_status">Running</td>' in listing


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
    assert '<span id="desk-spent">$0.05</span> of <span id="desk-budget">$0.10</span>' in page


def test_the_batch_page_shows_settled_and_reserved_spend_apart(editor_client, make_batch):
    batch = make_batch(["generated", "generating"], cost="0.012500")  # the drafting item holds a $0.05 reservation
    data = editor_client.get(progress_url(batch)).json()
    assert (data["settled_usd"], data["reserved_usd"], data["spent_usd"]) == ("0.012500", "0.050000", "0.062500")
    assert (data["shown"]["settled"], data["shown"]["reserved"]) == ("$0.0125", "$0.05")
    page = editor_client.get(page_url(batch)).content.decode()
    assert 'Settled <span id="desk-settled">$0.0125</span> · reserved <span id="desk-reserved">$0.05</span>' in page


def test_a_budget_stop_names_what_was_spent_what_is_left_and_the_call_that_did_not_fit(editor_client, make_batch):
    refusal = ("Not drafted: Batch budget reached: $0.0074 spent or reserved of $0.05; the next call could cost "
               "up to $0.0421.")
    batch = make_batch(["generated", "skipped_budget"], status=Batch.Status.BUDGET_EXHAUSTED, budget="0.05",
                       cost="0.007400", error=refusal)
    data = editor_client.get(progress_url(batch)).json()
    assert data["stop_note"].startswith("Stopped by the budget: $0.0074 spent (14.8%) and $0.0426 left of $0.05.")
    assert "could have cost up to $0.0421 (its worst case), more than was left" in data["stop_note"]
    assert "ran out" not in editor_client.get(page_url(batch)).content.decode()


def test_a_batch_stopped_without_a_stated_worst_case_still_names_spent_and_left(editor_client, make_batch):
    batch = make_batch(["skipped_budget"], status=Batch.Status.BUDGET_EXHAUSTED, budget="1", error="Not drafted.")
    note = editor_client.get(progress_url(batch)).json()["stop_note"]
    assert note.startswith("Stopped by the budget: $0.00 spent (0%) and $1.00 left of $1.00.")
    assert "worst case" not in note


def test_a_batch_that_was_not_stopped_by_the_budget_has_no_stop_note(editor_client, make_batch):
    assert editor_client.get(progress_url(make_batch(["generated"], status="done"))).json()["stop_note"] == ""


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
    ("skipped_budget", "Not drafted: Batch budget reached: $39.9 spent", "could not cover the worst case"),
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


def test_the_batch_list_shows_item_counts_and_spend_without_double_counting(editor_client, make_batch):
    make_batch(["generated", "generated", "pending"], cost="0.010000")
    page = editor_client.get(reverse("admin:batches_batch_changelist")).content.decode()
    assert "2 drafted · 0 failed · 0 skipped · 1 in progress" in page
    assert '<td class="field-spent">$0.02</td>' in page


def test_the_batch_list_shows_money_with_at_most_four_decimals(editor_client, make_batch):
    make_batch(["generated"] * 3, cost="0.022073666")
    page = editor_client.get(reverse("admin:batches_batch_changelist")).content.decode()
    assert '<td class="field-spent">$0.0662</td>' in page and '<td class="field-budget">$40.00</td>' in page


def test_a_batch_cannot_be_deleted_and_its_page_says_why(editor_client, make_batch, admin_client):
    batch = make_batch(["generated"], status=Batch.Status.DONE)
    for client in (editor_client, admin_client):
        page = client.get(page_url(batch)).content.decode()
        assert "deletelink" not in page
        assert "spend history in the cost ledger is append-only" in page
    response = admin_client.get(reverse("admin:batches_batch_delete", args=[batch.pk]), follow=True)
    assert Batch.objects.filter(pk=batch.pk).exists()
    assert "permission" not in response.content.decode().lower().split("messagelist")[1][:400]
    assert "append-only" in [str(m) for m in response.context["messages"]][0]
    listing = admin_client.get(reverse("admin:batches_batch_changelist")).content.decode()
    assert 'value="delete_selected"' not in listing


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


@pytest.mark.redis
def test_a_batch_waiting_over_a_minute_with_no_worker_says_so_with_the_command_that_starts_one(
    editor_client, make_batch, redis_broker
):
    import datetime

    from django.utils import timezone

    batch = make_batch([], status=Batch.Status.QUEUED)
    Batch.objects.filter(pk=batch.pk).update(created_at=timezone.now() - datetime.timedelta(minutes=2))
    assert editor_client.get(progress_url(batch)).json()["waiting_for_worker"] is True
    page = editor_client.get(page_url(batch)).content.decode()
    note = page[page.index('id="desk-no-worker"'):page.index("</p>", page.index('id="desk-no-worker"'))]
    assert "hidden" not in note.split(">")[0] and "no Celery worker is running" in note and "make serve" in note


@pytest.mark.redis
def test_a_batch_queued_moments_ago_is_not_yet_said_to_be_waiting(editor_client, make_batch, redis_broker):
    batch = make_batch([], status=Batch.Status.QUEUED)
    assert editor_client.get(progress_url(batch)).json()["waiting_for_worker"] is False
