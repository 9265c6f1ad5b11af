"""Sources and flags at the desk: "Check before approving" on the draft page, one-click dismissal in the trail,
approval past open flags confirmed, the Sources list in the preview and both exports, and a topic's material."""
from __future__ import annotations

import io
import zipfile

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from batches.models import Batch, DraftFlag, Newsletter
from tests.admin.conftest import queued_tasks
from topics.models import SourceDocument

BODY = """## Ground Advantage rises in January

Ground Advantage rises 7.8% on average [1]. One seller says 37.5% of orders were late.

The full breakdown is in [this guide](https://unsourced.example.com/guide).
"""
SOURCES = [
    {"n": 1, "title": "USPS Ground Advantage rises 7.8% in January", "url": "https://parcelwire.example/usps",
     "kind": "article", "cited": True},
    {"n": 2, "title": "A thread nobody cited", "url": "https://www.reddit.com/comments/abc123/", "kind": "reddit",
     "cited": False},
]


@pytest.fixture
def flagged(make_batch):
    """A generated draft citing source 1, with a figure and a link its sources do not back, and a source that
    could not be read."""
    newsletter = make_batch(["generated"], status=Batch.Status.DONE, body=BODY).newsletters.get()
    Newsletter.objects.filter(pk=newsletter.pk).update(sources=SOURCES)
    DraftFlag.objects.create(newsletter=newsletter, kind="figure", text="37.5%",
                             sentence="One seller says 37.5% of orders were late.")
    DraftFlag.objects.create(newsletter=newsletter, kind="link", text="https://unsourced.example.com/guide",
                             sentence="The full breakdown is in this guide.")
    SourceDocument.objects.create(topic=newsletter.topic, kind="article", url="https://paywalled.example/usps",
                                  status="failed", reason="the site refused access (HTTP 403)")
    newsletter.refresh_from_db()
    return newsletter


def page_url(newsletter) -> str:
    return reverse("admin:batches_newsletter_change", args=[newsletter.pk])


def dismiss_url(flag) -> str:
    return reverse("admin:batches_newsletter_dismiss_flag", args=[flag.newsletter_id, flag.pk])


def review_url(newsletter) -> str:
    return reverse("admin:batches_newsletter_review", args=[newsletter.pk])


# --- the draft page ----------------------------------------------------------------------------------------------

def test_the_draft_page_lists_each_open_flag_with_its_sentence_highlighted(editor_client, flagged):
    page = editor_client.get(page_url(flagged)).content.decode()

    assert "Check before approving" in page
    assert "One seller says <mark>37.5%</mark> of orders were late." in page
    assert "The full breakdown is in this guide." in page and "https://unsourced.example.com/guide" in page
    assert page.count('class="desk-flag"') == 2
    assert page.count(">Dismiss</button>") == 2


def test_the_draft_page_lists_the_sources_given_and_those_that_could_not_be_read(editor_client, flagged):
    page = editor_client.get(page_url(flagged)).content.decode()

    assert "[1]</span>" in page and "USPS Ground Advantage rises 7.8% in January" in page
    assert 'class="uncited"' in page and "A thread nobody cited" in page
    assert "https://paywalled.example/usps" in page and "the site refused access (HTTP 403)" in page


def test_the_preview_ends_with_the_sources_the_draft_cites(editor_client, flagged):
    preview = editor_client.get(page_url(flagged)).context["preview_html"]

    assert "<h2>Sources</h2>" in preview
    assert ('<li>[1] <a href="https://parcelwire.example/usps" rel="noopener noreferrer">USPS Ground Advantage '
            "rises 7.8% in January</a></li>") in preview
    assert "A thread nobody cited" not in preview


def test_a_draft_without_flags_says_its_checks_passed(editor_client, draft):
    page = editor_client.get(page_url(draft)).content.decode()

    assert "Check before approving" not in page and 'id="desk-flags-clear"' in page


def test_someone_who_may_not_approve_sees_the_flags_without_a_dismiss_button(viewer_client, flagged):
    page = viewer_client.get(page_url(flagged)).content.decode()

    assert "Check before approving" in page and ">Dismiss</button>" not in page


# --- dismissing --------------------------------------------------------------------------------------------------

def test_one_click_dismisses_a_flag_and_the_trail_records_who_and_when(editor_client, post_form, flagged, editor):
    flag = flagged.flags.get(kind="figure")

    response = post_form(editor_client, dismiss_url(flag), {}, page=page_url(flagged))

    assert response.status_code == 302 and response["Location"].endswith("#desk-grounding")
    flag.refresh_from_db()
    assert flag.dismissed_by == editor and flag.dismissed_at is not None and not flag.is_open
    trail = editor_client.get(page_url(flagged)).context["trail"]
    assert any(row["who"] == "Editor" and row["what"] == "Dismissed a flag (figure not in the sources): “37.5%”."
               for row in trail)
    grounding = editor_client.get(page_url(flagged)).context["grounding"]
    assert [f.text for f in grounding["open_flags"]] == ["https://unsourced.example.com/guide"]
    assert [f.text for f in grounding["dismissed_flags"]] == ["37.5%"]


def test_a_flag_already_dismissed_keeps_its_first_dismissal(editor_client, post_form, flagged, viewer):
    flag = flagged.flags.get(kind="figure")
    DraftFlag.objects.filter(pk=flag.pk).update(dismissed_by=viewer, dismissed_at="2026-11-30T10:00:00Z")

    post_form(editor_client, dismiss_url(flag), {}, page=page_url(flagged))

    flag.refresh_from_db()
    assert flag.dismissed_by == viewer
    assert not LogEntry.objects.filter(change_message__contains="Dismissed").exists()


def test_dismissing_needs_the_approve_permission(viewer_client, post_form, flagged):
    flag = flagged.flags.get(kind="figure")

    response = post_form(viewer_client, dismiss_url(flag), {}, page=page_url(flagged))

    assert response.status_code == 403
    flag.refresh_from_db()
    assert flag.is_open


def test_a_flag_cannot_be_dismissed_through_another_draft(editor_client, post_form, flagged, make_batch):
    other = make_batch(["generated"]).newsletters.get()
    flag = flagged.flags.get(kind="figure")

    url = reverse("admin:batches_newsletter_dismiss_flag", args=[other.pk, flag.pk])
    response = post_form(editor_client, url, {}, page=page_url(flagged))

    assert response.status_code == 404


# --- approving past open flags -----------------------------------------------------------------------------------

def test_approving_a_draft_with_open_flags_asks_for_confirmation_first(editor_client, post_form, flagged):
    response = post_form(editor_client, review_url(flagged), {"decision": "approve"}, page=page_url(flagged))

    assert response.status_code == 200
    page = response.content.decode()
    assert "This draft still has 2 open flags" in page and "Approve anyway" in page
    assert "One seller says <mark>37.5%</mark> of orders were late." in page
    flagged.refresh_from_db()
    assert flagged.status == Newsletter.Status.GENERATED


def test_confirming_approves_the_draft_with_its_flags_still_open(editor_client, post_form, flagged, editor):
    response = post_form(editor_client, review_url(flagged), {"decision": "approve", "confirm_flags": "1"},
                         page=page_url(flagged))

    assert response.status_code == 302
    flagged.refresh_from_db()
    assert (flagged.status, flagged.reviewed_by) == (Newsletter.Status.APPROVED, editor)
    assert flagged.flags.filter(dismissed_at__isnull=True).count() == 2


def test_a_draft_whose_flags_are_all_dismissed_is_approved_at_once(editor_client, post_form, flagged, editor):
    for flag in flagged.flags.all():
        post_form(editor_client, dismiss_url(flag), {}, page=page_url(flagged))

    response = post_form(editor_client, review_url(flagged), {"decision": "approve"}, page=page_url(flagged))

    assert response.status_code == 302
    flagged.refresh_from_db()
    assert flagged.status == Newsletter.Status.APPROVED


def test_rejecting_a_flagged_draft_needs_no_confirmation(editor_client, post_form, flagged):
    post_form(editor_client, review_url(flagged), {"decision": "reject"}, page=page_url(flagged))

    flagged.refresh_from_db()
    assert flagged.status == Newsletter.Status.REJECTED


def test_the_approve_action_asks_before_approving_drafts_with_open_flags(editor_client, run_action, flagged, draft):
    changelist = reverse("admin:batches_newsletter_changelist")

    response = run_action(editor_client, changelist, "approve", [flagged.pk, draft.pk])

    assert response.status_code == 200
    page = response.content.decode()
    assert "1 of the selected drafts still have 2 open flags" in page
    assert f'name="_selected_action" value="{flagged.pk}"' in page
    assert f'name="_selected_action" value="{draft.pk}"' in page
    assert not Newsletter.objects.filter(status=Newsletter.Status.APPROVED).exists()


def test_confirming_the_approve_action_approves_every_selected_draft(editor_client, flagged, draft):
    changelist = reverse("admin:batches_newsletter_changelist")
    editor_client.get(changelist)
    token = editor_client.cookies["csrftoken"].value

    response = editor_client.post(changelist, {"action": "approve", "confirm_flags": "1", "csrfmiddlewaretoken": token,
                                               "_selected_action": [str(flagged.pk), str(draft.pk)]})

    assert response.status_code == 302
    assert Newsletter.objects.filter(status=Newsletter.Status.APPROVED).count() == 2


# --- exports -----------------------------------------------------------------------------------------------------

def approve(newsletter) -> None:
    Newsletter.objects.filter(pk=newsletter.pk).update(status=Newsletter.Status.APPROVED)


def test_the_markdown_export_ends_with_the_sources_list(editor_client, flagged):
    approve(flagged)

    text = editor_client.get(reverse("admin:batches_newsletter_export", args=[flagged.pk, "md"])).content.decode()

    assert text.endswith("## Sources\n\n- \\[1\\] [USPS Ground Advantage rises 7.8% in January]"
                         "(https://parcelwire.example/usps)\n")


def test_the_email_export_ends_with_the_sources_list(editor_client, flagged):
    approve(flagged)

    html = editor_client.get(reverse("admin:batches_newsletter_export", args=[flagged.pk, "html"])).content.decode()

    assert ">Sources</h2>" in html
    assert 'href="https://parcelwire.example/usps"' in html and "A thread nobody cited" not in html


def test_the_batch_zip_carries_the_sources_in_both_files(editor_client, flagged):
    approve(flagged)

    response = editor_client.get(reverse("admin:batches_batch_export", args=[flagged.batch_id]))

    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        contents = [archive.read(name).decode() for name in archive.namelist()]
    assert len(contents) == 2 and all("https://parcelwire.example/usps" in c for c in contents)


# --- a topic's material ------------------------------------------------------------------------------------------

def test_the_topic_page_shows_its_source_material_read_and_unread(editor_client, make_topic):
    topic = make_topic("USPS rates", url="https://parcelwire.example/usps")
    SourceDocument.objects.create(topic=topic, kind="article", url=topic.url, title="USPS rises 7.8%",
                                  text="Ground Advantage prices rise an average of 7.8% in January.", status="ok")
    SourceDocument.objects.create(topic=topic, kind="reddit", url="https://www.reddit.com/comments/abc123/",
                                  status="failed", reason="Reddit is not configured", transient=True)

    page = editor_client.get(reverse("admin:topics_topic_change", args=[topic.pk])).content.decode()

    assert "Source material" in page
    assert "USPS rises 7.8%" in page and "Ground Advantage prices rise an average of 7.8% in January." in page
    assert "Reddit is not configured" in page


def test_fetching_source_material_queues_one_task_per_topic(editor_client, run_action, make_topic, redis_broker):
    topics = [make_topic(f"Story {n}") for n in range(3)]

    response = run_action(editor_client, reverse("admin:topics_topic_changelist"), "fetch_material",
                          [t.pk for t in topics])

    assert response.status_code == 302
    assert queued_tasks(redis_broker) == ["topics.gather_material"] * 3


def test_fetching_source_material_with_the_broker_down_says_so(editor_client, run_action, make_topic, broker_down):
    topic = make_topic("Story")

    response = run_action(editor_client, reverse("admin:topics_topic_changelist"), "fetch_material", [topic.pk])

    messages = [str(m) for m in response.wsgi_request._messages]
    assert any("the task broker is unreachable" in m for m in messages)


def test_the_fetch_task_reads_the_topics_sources(web_pages, make_topic):
    from topics.tasks import gather_material_task

    topic = make_topic("USPS rates", url=web_pages.url("/news/usps-ground-advantage-2027"))

    assert gather_material_task(topic.pk) == 1
    assert SourceDocument.objects.get(topic=topic).status == SourceDocument.Status.OK
    assert gather_material_task(999_999) == 0  # a topic deleted meanwhile


def test_a_source_address_that_is_not_http_is_never_made_a_link(editor_client, flagged):
    Newsletter.objects.filter(pk=flagged.pk).update(sources=[
        {"n": 1, "title": "Looks harmless", "url": "javascript:alert(document.cookie)", "kind": "social",
         "cited": True}])
    SourceDocument.objects.create(topic=flagged.topic, kind="social", url="javascript:alert(1)", status="failed",
                                  reason="the source gave no text")

    page = editor_client.get(page_url(flagged)).content.decode()
    topic_page = editor_client.get(reverse("admin:topics_topic_change", args=[flagged.topic_id])).content.decode()

    assert 'href="javascript:' not in page and "Looks harmless" in page
    assert 'href="javascript:' not in topic_page


def test_the_run_page_says_when_it_estimates_material_not_fetched_yet(editor_client, make_topic, web_pages):
    make_topic("USPS rates", category="shipping_logistics", url=web_pages.url("/news/usps-ground-advantage-2027"))

    page = editor_client.get(reverse("admin:batches_batch_run")).content.decode()

    assert "Source material is not fetched yet for 1 of these 1 topics" in page


def test_the_run_page_says_fetched_material_is_counted(editor_client, make_topic, web_pages):
    from topics.material import gather_material

    topic = make_topic("USPS rates", category="shipping_logistics",
                       url=web_pages.url("/news/usps-ground-advantage-2027"))
    gather_material(topic=topic)

    page = editor_client.get(reverse("admin:batches_batch_run")).content.decode()

    assert "The estimate counts the source material already fetched for these topics." in page


def test_dismissing_from_the_draft_page_saves_the_edited_text_first(editor_client, post_form, flagged, editor):
    from tests.admin.test_draft_versions import form_data

    flag = flagged.flags.get(kind="figure")
    edited = flagged.body_markdown.replace("37.5% of orders", "some orders")

    response = post_form(editor_client, page_url(flagged), form_data(flagged, body_markdown=edited,
                                                                     _dismiss_flag=str(flag.pk)),
                         page=page_url(flagged))

    assert response.status_code == 302
    flagged.refresh_from_db()
    flag.refresh_from_db()
    assert flagged.body_markdown == edited
    assert (flag.dismissed_by, flag.is_open) == (editor, False)


def test_approving_from_the_draft_page_with_open_flags_saves_then_asks(editor_client, post_form, flagged):
    from tests.admin.test_draft_versions import form_data

    response = post_form(editor_client, page_url(flagged), form_data(flagged, subject="A better subject",
                                                                     _decision="approve_next"),
                         page=page_url(flagged))

    assert response.status_code == 200
    page = response.content.decode()
    assert "Approve anyway" in page and 'value="approve_next"' in page and "Nothing was decided" not in page
    flagged.refresh_from_db()
    assert (flagged.subject, flagged.status) == ("A better subject", Newsletter.Status.GENERATED)
