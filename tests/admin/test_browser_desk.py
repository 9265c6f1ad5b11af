"""The editor's desk in a real browser: Chromium, the live server, a real Celery worker on Redis, the fake Claude.

These tests also take the screenshots the README shows: into docs/screenshots/ when UPDATE_SCREENSHOTS=1
(`make screenshots`), otherwise into a temporary folder, so an ordinary test run leaves the work tree clean.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from batches.models import Batch, Newsletter
from tests.admin.conftest import DISTINCT_TITLES

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.slow]

SCREENSHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "newsroom-screenshots"
)
BATCH_SECONDS = 90


def screenshot(page, name: str) -> None:
    """The whole page, without the admin's navigation sidebar (it adds nothing to the picture)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.add_style_tag(content="#nav-sidebar, #toggle-nav-sidebar { display: none !important; } "
                               ".main.shifted > #nav-sidebar + .content, .main > .content { max-width: none; }")
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.mark.django_db(transaction=True, reset_sequences=True)  # "Batch #1" in the screenshots, on any database
def test_an_editor_runs_a_batch_from_the_admin_then_reviews_approves_and_exports_a_draft(
    desk_page, log_in, editor, categories, make_topic, fake_anthropic, desk_worker
):
    from playwright.sync_api import expect

    for i, slug in enumerate(categories):
        make_topic(DISTINCT_TITLES[slug], category=slug, score=90 - i, status="new",
                   summary="Sellers compare notes on what changed and what it costs them.")
    fake_anthropic.latency = 0.8  # long enough to see the batch running, short enough for a quick test
    page = desk_page
    log_in(page, "editor")

    # Approve the new topics from the topic list.
    page.goto("/admin/topics/topic/?status__exact=new")
    page.check("#action-toggle")
    page.select_option("select[name=action]", "approve")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("8 topic(s) marked approved")

    # New batch: the confirmation page shows the selection, its categories and its cost.
    page.goto("/admin/batches/batch/")
    page.click("#desk-new-batch")
    expect(page.locator("#desk-selection tbody tr")).to_have_count(8)
    expect(page.locator("#desk-categories .status-done")).to_have_count(8)
    expect(page.locator("#desk-estimate")).to_contain_text("$")
    screenshot(page, "confirm-batch")
    page.click("#desk-confirm-button")

    # The batch page follows the batch to its end without a reload.
    page.wait_for_url("**/admin/batches/batch/*/change/")
    expect(page.locator(".messagelist")).to_contain_text("is queued")
    expect(page.locator("#desk-progress")).to_have_attribute("data-live", "true")
    page.evaluate("window.__deskLoadedOnce = true")
    expect(page.locator("#desk-progress")).to_have_attribute("data-live", "false", timeout=BATCH_SECONDS * 1000)
    assert page.evaluate("window.__deskLoadedOnce") is True, "the page reloaded instead of updating itself"
    expect(page.locator("#desk-status")).to_have_text("Done")
    expect(page.locator("#desk-done")).to_have_text("8")
    expect(page.locator("#desk-counts")).to_have_text("8 drafted · 0 failed · 0 skipped")
    expect(page.locator("#desk-items tbody tr")).to_have_count(8)
    expect(page.locator("#desk-items .status-generated")).to_have_count(8)
    expect(page.locator("#desk-live")).to_have_text("Finished")
    screenshot(page, "batch-progress")
    batch = Batch.objects.get()
    assert batch.status == Batch.Status.DONE and fake_anthropic.message_calls == 8

    # Open a draft, edit it, approve it.
    page.locator("#desk-items tbody tr").first.locator("td[data-label=Draft] a").click()
    page.wait_for_url("**/admin/batches/newsletter/*/change/")
    expect(page.locator("#desk-preview .desk-mail-body h2")).to_be_visible()
    page.fill("#id_subject", "Ground Advantage rates: what changes for you in December")
    page.click("input[name=_continue]")
    expect(page.locator("h1.desk-subject")).to_have_text("Ground Advantage rates: what changes for you in December")
    page.click("#desk-approve")
    # These topics link to nothing, so each draft is flagged for thin material: approving asks first.
    expect(page.locator(".errornote")).to_contain_text("open flag")
    page.click("#desk-approve-anyway")
    expect(page.locator("#desk-draft-status")).to_have_text("Approved")
    expect(page.locator("#desk-trail")).to_contain_text("Approved.")
    screenshot(page, "draft-review")
    newsletter = Newsletter.objects.get(status=Newsletter.Status.APPROVED)
    assert newsletter.reviewed_by == editor

    # Download the exports.
    with page.expect_download() as download:
        page.click("#desk-export-html")
    html = Path(download.value.path()).read_text()
    assert download.value.suggested_filename.endswith(".html")
    assert "<title>Ground Advantage rates: what changes for you in December</title>" in html
    with page.expect_download() as download:
        page.click("#desk-export-md")
    assert 'subject: "Ground Advantage rates: what changes for you in December"' in Path(
        download.value.path()).read_text()

    # The spend dashboard shows what the batch cost.
    page.goto("/admin/batches/costledgerentry/dashboard/")
    expect(page.locator("#desk-batches tbody tr")).to_have_count(1)
    expect(page.locator("#desk-chart rect.bar")).to_have_count(30)
    screenshot(page, "spend-dashboard")


@pytest.mark.django_db(transaction=True)
def test_a_user_without_the_permission_cannot_run_a_batch(desk_page, log_in, viewer, topics_in_every_category):
    page = desk_page
    log_in(page, "viewer")
    page.goto("/admin/batches/batch/")
    assert page.locator("#desk-new-batch").count() == 0
    page.goto("/admin/topics/topic/")
    assert page.locator("select[name=action] option[value=run_batch]").count() == 0
    response = page.goto("/admin/batches/batch/run/")
    assert response.status == 403
    assert not Batch.objects.exists()
