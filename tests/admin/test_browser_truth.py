"""The desk tells the truth, in a real browser (Debian's Chromium, the live server): edits survive Approve, the
stand-in says it is one, a missing worker is said before Confirm, versions come back, and phones need no
sideways scrolling. Screenshots go to a temporary folder (docs/screenshots/ with UPDATE_SCREENSHOTS=1)."""
from __future__ import annotations

import pytest

from batches import economy, running
from batches.claude_standin_batches import batches_of
from batches.models import Batch, Newsletter
from tests.admin.test_browser_desk import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def phone_page(chromium, live_server):
    """A browser tab as wide as a phone (390 px)."""
    context = chromium.new_context(base_url=live_server.url, viewport=PHONE)
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def draft_url(newsletter) -> str:
    return f"/admin/batches/newsletter/{newsletter.pk}/change/"


def test_approve_with_unsaved_edits_approves_the_edited_text(desk_page, log_in, editor, draft):
    from playwright.sync_api import expect

    page = desk_page
    log_in(page, "editor")
    page.goto(draft_url(draft))
    page.fill("#id_subject", "Peak surcharges: three moves before December")
    page.click("#desk-approve")  # no Save first: the button saves the form, then approves
    expect(page.locator("#desk-draft-status")).to_have_text("Approved")
    expect(page.locator("h1.desk-subject")).to_have_text("Peak surcharges: three moves before December")
    draft.refresh_from_db()
    assert (draft.status, draft.subject) == (Newsletter.Status.APPROVED,
                                             "Peak surcharges: three moves before December")
    assert draft.versions.get().subject.startswith("Subject of story")


def test_enter_in_the_subject_field_saves_and_does_not_approve(desk_page, log_in, editor, draft):
    from playwright.sync_api import expect

    page = desk_page
    log_in(page, "editor")
    page.goto(draft_url(draft))
    page.fill("#id_subject", "Saved with Enter")
    page.press("#id_subject", "Enter")
    expect(page.locator("h1.desk-subject")).to_have_text("Saved with Enter")
    draft.refresh_from_db()
    assert draft.status == Newsletter.Status.GENERATED


def test_an_editor_restores_an_earlier_version_of_a_draft(desk_page, log_in, editor, draft):
    from playwright.sync_api import expect

    original = draft.subject
    page = desk_page
    log_in(page, "editor")
    page.goto(draft_url(draft))
    page.fill("#id_subject", "A second thought")
    page.click("input[name=_continue]")
    expect(page.locator("h1.desk-subject")).to_have_text("A second thought")
    page.click("#desk-versions a")
    expect(page.locator("#desk-preview h1.desk-subject")).to_have_text(original)
    screenshot(page, "draft-version")
    page.click("#desk-restore-button")
    expect(page.locator(".messagelist")).to_contain_text("is back")
    expect(page.locator("h1.desk-subject")).to_have_text(original)
    expect(page.locator("#desk-versions")).to_contain_text("A second thought")
    draft.refresh_from_db()
    assert draft.subject == original


def test_with_the_stand_in_every_desk_page_says_drafts_do_not_come_from_claude(desk_page, log_in, editor, settings,
                                                                              draft):
    from playwright.sync_api import expect

    settings.CLAUDE_STANDIN = True
    page = desk_page
    log_in(page, "editor")
    for url in ("/admin/", "/admin/topics/topic/", f"/admin/batches/batch/{draft.batch_id}/change/",
                draft_url(draft), "/admin/batches/costledgerentry/dashboard/"):
        page.goto(url)
        expect(page.locator("#desk-standin")).to_contain_text("Drafts come from a local stand-in, not Claude.")
        expect(page.locator("#desk-standin")).to_contain_text("ANTHROPIC_API_KEY")
    screenshot(page, "standin-notice")


@pytest.mark.redis
def test_the_run_page_warns_before_confirm_when_no_worker_is_running(desk_page, log_in, editor, settings,
                                                                    redis_broker, topics_in_every_category):
    from playwright.sync_api import expect

    settings.ANTHROPIC_API_KEY = "sk-ant-test-0000000000000000wxyz"
    page = desk_page
    log_in(page, "editor")
    page.goto("/admin/batches/batch/run/")
    warning = page.locator("#desk-no-worker")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("No worker is running")
    expect(warning).to_contain_text("make serve")
    assert warning.bounding_box()["y"] < page.locator("#desk-confirm-button").bounding_box()["y"]
    screenshot(page, "run-no-worker")


def fits_a_phone(page) -> None:
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= PHONE["width"], f"{page.url} is {width} px wide at {PHONE['width']} px"


def test_at_390_px_the_batch_page_needs_no_sideways_scrolling(phone_page, log_in, editor, make_batch):
    long_error = "Gave up after 4 attempts: " + "Anthropic API answered 529 overloaded_error: Overloaded " * 4
    batch = make_batch(["generated", "failed", "skipped_budget", "generating"], status=Batch.Status.RUNNING,
                       error=long_error, titles=["A headline long enough to wrap across a phone's narrow screen",
                                                 "Second", "Third", "Fourth"])
    log_in(phone_page, "editor")
    phone_page.goto(f"/admin/batches/batch/{batch.pk}/change/")
    phone_page.wait_for_selector("#desk-items")
    fits_a_phone(phone_page)
    screenshot(phone_page, "batch-390")


def test_at_390_px_the_confirmation_page_needs_no_sideways_scrolling(phone_page, log_in, editor, settings,
                                                                     topics_in_every_category):
    settings.ANTHROPIC_API_KEY = "sk-ant-test-0000000000000000wxyz"
    log_in(phone_page, "editor")
    phone_page.goto("/admin/batches/batch/run/?budget_usd=0.05")
    phone_page.wait_for_selector("#desk-selection")
    fits_a_phone(phone_page)
    assert "%" in phone_page.inner_text("#desk-estimate-percent")
    screenshot(phone_page, "confirm-390")


def test_at_390_px_the_topic_pages_need_no_sideways_scrolling(phone_page, log_in, editor, make_batch):
    draft = make_batch(["generated"], status=Batch.Status.DONE).newsletters.get()
    log_in(phone_page, "editor")
    for url in ("/admin/topics/topic/", f"/admin/topics/topic/{draft.topic_id}/change/", "/admin/topics/topic/add/",
                draft_url(draft), "/admin/"):
        phone_page.goto(url)
        fits_a_phone(phone_page)
    phone_page.goto("/admin/topics/topic/")
    screenshot(phone_page, "topics-390")


def economy_batch_page(page, log_in, fake_anthropic):
    """An economy batch submitted to the fake Anthropic (an hour of processing), its page open as the editor."""
    from decimal import Decimal

    api = batches_of(fake_anthropic)
    api.processing_seconds = 3600
    batch = running.create_batch(size=8, budget_usd=Decimal("40"), delivery=Batch.Delivery.ECONOMY)
    economy.submit(batch_id=batch.pk)
    log_in(page, "editor")
    page.goto(f"/admin/batches/batch/{batch.pk}/change/")
    return api, batch


@pytest.mark.usefixtures("migration_data")
def test_the_economy_line_keeps_up_with_anthropic_without_a_reload(desk_page, log_in, editor, fake_anthropic,
                                                                   topics_in_every_category, settings):
    from playwright.sync_api import expect

    settings.ECONOMY_POLL_MIN_SECONDS = settings.ECONOMY_POLL_MAX_SECONDS = 0
    page = desk_page
    api, batch = economy_batch_page(page, log_in, fake_anthropic)
    line = page.locator("#desk-economy-line")
    expect(line).to_contain_text("0 of 8 back · expires tomorrow")
    expect(page.locator("#desk-economy-error")).to_be_hidden()
    expect(page.locator("#desk-economy-cancel")).to_be_visible()
    page.evaluate("window.__deskLoadedOnce = true")

    # A poll meets a 404 (as the API can answer around the end): the page says so by itself.
    for made in api.created():
        made.not_found_left = 1
    economy.poll(batch_id=batch.pk, force=True)
    expect(page.locator("#desk-economy-error")).to_contain_text("404")

    # Anthropic finishes the batch and the next poll collects it: the line, the note and the button follow.
    for made in api.created():
        made.ends_at = 0
    economy.poll(batch_id=batch.pk, force=True)
    expect(line).to_contain_text("8 of 8 back")
    expect(line).not_to_contain_text("expires")
    expect(page.locator("#desk-economy-error")).to_be_hidden()
    expect(page.locator("#desk-economy-cancel")).to_have_count(0)
    expect(page.locator("#desk-status")).to_have_text("Done")
    assert page.evaluate("window.__deskLoadedOnce") is True, "the page reloaded instead of updating itself"


@pytest.mark.usefixtures("migration_data")
def test_the_economy_cancel_button_cancels_with_anthropic_in_a_browser(desk_page, log_in, editor, fake_anthropic,
                                                                       topics_in_every_category):
    from playwright.sync_api import expect

    from batches.models import EconomySubmission

    page = desk_page
    api, batch = economy_batch_page(page, log_in, fake_anthropic)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#desk-economy-cancel")  # the card is inside the admin's form: the button must post its own form

    expect(page.locator(".messagelist")).to_contain_text("cancel sent")
    assert api.calls["cancel"] == 1
    assert EconomySubmission.objects.get(batch=batch).cancel_requested_at is not None
    expect(page.locator("#desk-economy-canceling")).to_be_visible()
    expect(page.locator("#desk-economy-cancel")).to_have_count(0)
