"""A grounded draft at the desk, in a real browser: its sources, "Check before approving" with the flagged sentence
highlighted in the preview, one-click dismissal, and approval past an open flag confirmed first.

The draft is written for real: the topic's page is read from the loopback web server, the fake Claude cites it and
plants a figure and a link no source holds, and the checks flag them.
"""
from __future__ import annotations

import pytest
from django.core.management import call_command

from batches.models import DraftFlag, Newsletter
from tests.admin.test_browser_desk import screenshot
from batches.claude_standin import Plant

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.mark.django_db(transaction=True)
def test_an_editor_checks_a_grounded_draft_dismisses_a_flag_and_approves_past_the_other(
    desk_page, log_in, editor, make_topic, fake_anthropic, web_pages
):
    from playwright.sync_api import expect

    make_topic("USPS Ground Advantage rises 7.8% in January", category="shipping_logistics",
               url=web_pages.url("/news/usps-ground-advantage-2027"),
               summary="Sellers compare what the January increase does to their labels.")
    fake_anthropic.plant(Plant(figure="37.5%", link="https://unsourced.example.com/guide"))
    call_command("runbatch", "--size", "1", "--json", stdout=open("/dev/null", "w"))
    newsletter = Newsletter.objects.get()
    assert newsletter.flags.count() == 2

    page = desk_page
    log_in(page, "editor")
    page.goto(f"/admin/batches/newsletter/{newsletter.pk}/change/")

    # The sources given to Claude, and what it must not be trusted on.
    expect(page.locator("#desk-sources")).to_contain_text("USPS Ground Advantage rises 7.8% in January")
    expect(page.locator("#desk-sources .status-ok")).to_have_text("cited")
    expect(page.locator("#desk-flags")).to_contain_text("Check before approving")
    expect(page.locator("#desk-flags .desk-flag")).to_have_count(2)
    figure = page.locator("#desk-flags .desk-flag[data-kind=figure]")
    expect(figure.locator("blockquote mark")).to_have_text("37.5%")
    # In the preview, the paragraph holding both flagged sentences is highlighted and the figure itself marked.
    expect(page.locator("#desk-preview .desk-flagged")).to_have_count(1)
    expect(page.locator("#desk-preview .desk-flagged")).to_contain_text("The full breakdown is in this guide.")
    expect(page.locator("#desk-preview mark.desk-flag-mark")).to_have_text("37.5%")
    expect(page.locator("#desk-preview a.desk-flag-mark")).to_have_text("this guide")
    expect(page.locator("#desk-preview .desk-mail-body")).to_contain_text("Sources")
    screenshot(page, "draft-flags")

    # One click dismisses the figure flag; the trail says who and when.
    figure.locator("button", has_text="Dismiss").click()
    expect(page.locator(".messagelist")).to_contain_text("Flag dismissed: “37.5%”.")
    expect(page.locator("#desk-flags .desk-flag")).to_have_count(1)
    expect(page.locator("#desk-trail")).to_contain_text("Dismissed a flag (figure not in the sources): “37.5%”.")
    flag = DraftFlag.objects.get(kind="figure")
    assert flag.dismissed_by == editor and flag.dismissed_at is not None

    # Approving with the link flag still open asks first.
    page.click("#desk-approve")
    expect(page.locator(".errornote")).to_contain_text("This draft still has 1 open flag")
    expect(page.locator("#desk-confirm-flags")).to_contain_text("https://unsourced.example.com/guide")
    newsletter.refresh_from_db()
    assert newsletter.status == Newsletter.Status.GENERATED
    page.click("#desk-approve-anyway")
    expect(page.locator("#desk-draft-status")).to_have_text("Approved")
    newsletter.refresh_from_db()
    assert (newsletter.status, newsletter.reviewed_by) == (Newsletter.Status.APPROVED, editor)
