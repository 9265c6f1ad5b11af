"""Export of approved drafts: Markdown, email-ready HTML, and a batch's drafts as one zip."""
from __future__ import annotations

import io
import re
import zipfile

import markdown
import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from batches.export import newsletter_email_html, newsletter_markdown
from batches.models import Batch
from tests.admin.conftest import csrf_client
from tests.admin.test_draft_review import HOSTILE_BODY


def export_url(newsletter, fmt: str) -> str:
    return reverse("admin:batches_newsletter_export", args=[newsletter.pk, fmt])


def approved(make_batch, **kwargs):
    return make_batch(["approved"], status=Batch.Status.DONE, **kwargs).newsletters.get()


def test_the_markdown_export_carries_subject_preview_text_and_body(editor_client, make_batch):
    newsletter = approved(make_batch)
    response = editor_client.get(export_url(newsletter, "md"))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    stem = newsletter.subject.lower().replace(" ", "-")
    assert response["Content-Disposition"] == f'attachment; filename="01-{stem}.md"'
    text = response.content.decode()
    assert text.startswith("---\n") and f'subject: "{newsletter.subject}"' in text
    assert f'preview_text: "{newsletter.preview_text}"' in text
    assert text.rstrip().endswith(newsletter.body_markdown.strip())


def test_a_subject_with_quotes_and_colons_cannot_break_the_markdown_header(make_batch):
    newsletter = approved(make_batch)
    newsletter.subject = 'Tariffs: "what now?"\nsubject: hijacked'
    header = newsletter_markdown(newsletter).split("---")[1]
    assert 'subject: "Tariffs: \\"what now?\\"\\nsubject: hijacked"' in header
    assert header.count("\nsubject:") == 1


def test_the_html_export_is_a_self_contained_email_with_inline_styles(editor_client, make_batch):
    newsletter = approved(make_batch)
    response = editor_client.get(export_url(newsletter, "html"))
    assert response["Content-Type"] == "text/html; charset=utf-8"
    html = response.content.decode()
    assert html.startswith("<!DOCTYPE html>") and f"<title>{newsletter.subject}</title>" in html
    assert newsletter.preview_text in html.split("<table", 1)[0]  # the preheader comes before the layout
    assert re.search(r'<p style="[^"]*font-size:17px', html)
    assert re.search(r'<a href="https://example.com/carriers" style="[^"]*"', html)
    assert "<link" not in html and "<style" not in html and "<script" not in html
    assert not re.search(r'src="https?://', html)


def test_a_list_written_right_under_a_paragraph_line_is_still_a_list():
    from batches.export import render_markdown

    html = render_markdown(
        "**What to do this week:**\n- Compare zones.\n- Move heavy SKUs.\n\n```\ntext\n- not a list\n```"
    )
    assert "<ul>\n<li>Compare zones.</li>\n<li>Move heavy SKUs.</li>\n</ul>" in html
    assert "- not a list" in html


def test_the_html_export_removes_script_injection_and_foreign_styles(make_batch):
    newsletter = approved(make_batch, body=HOSTILE_BODY + '\n<p style="position:fixed">styled</p>\n')
    html = newsletter_email_html(newsletter)
    assert "<script" not in html and "onerror" not in html and "onclick" not in html
    assert "javascript:" not in html and "position:fixed" not in html


def test_a_draft_that_is_not_approved_is_not_exported(editor_client, draft):
    response = editor_client.get(export_url(draft, "md"))
    assert response.status_code == 302
    messages = [str(m) for m in editor_client.get(response["Location"]).context["messages"]]
    assert any("Only approved drafts" in m for m in messages)


def test_an_unknown_export_format_is_a_bad_request(editor_client, make_batch):
    assert editor_client.get(export_url(approved(make_batch), "pdf")).status_code == 400


def test_exporting_needs_permission_to_view_drafts(db, make_batch):
    outsider = User.objects.create_user("outsider", password="x", is_staff=True)
    newsletter = approved(make_batch)
    client = csrf_client(outsider)
    assert client.get(export_url(newsletter, "md")).status_code == 403
    assert client.get(reverse("admin:batches_batch_export", args=[newsletter.batch_id])).status_code == 403


def test_the_batch_export_zips_each_approved_draft_as_markdown_and_html(editor_client, make_batch):
    batch = make_batch(["approved", "generated", "approved", "failed"], status=Batch.Status.PARTIAL)
    response = editor_client.get(reverse("admin:batches_batch_export", args=[batch.pk]))
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == f'attachment; filename="batch-{batch.pk}-approved-drafts.zip"'
    names = sorted(zipfile.ZipFile(io.BytesIO(response.content)).namelist())
    first, third = batch.newsletters.order_by("position")[0], batch.newsletters.order_by("position")[2]
    assert names == sorted([
        f"01-{first.subject.lower().replace(' ', '-')}.html", f"01-{first.subject.lower().replace(' ', '-')}.md",
        f"03-{third.subject.lower().replace(' ', '-')}.html", f"03-{third.subject.lower().replace(' ', '-')}.md",
    ])


def test_a_batch_without_approved_drafts_exports_nothing(editor_client, make_batch):
    batch = make_batch(["generated"], status=Batch.Status.DONE)
    response = editor_client.get(reverse("admin:batches_batch_export", args=[batch.pk]))
    assert response.status_code == 302
    messages = [str(m) for m in editor_client.get(response["Location"]).context["messages"]]
    assert any("no approved draft" in m for m in messages)


def test_the_list_export_action_zips_only_the_approved_drafts_selected(editor_client, run_action, make_batch):
    batch = make_batch(["approved", "generated", "approved"], status=Batch.Status.DONE)
    ids = list(batch.newsletters.order_by("position").values_list("pk", flat=True))
    response = run_action(editor_client, reverse("admin:batches_newsletter_changelist"), "export_zip", ids[:2])
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    assert len(names) == 2 and all(name.startswith("01-") for name in names)


def test_the_batch_page_offers_the_zip_once_a_draft_is_approved(editor_client, make_batch):
    batch = make_batch(["approved", "generated"], status=Batch.Status.DONE)
    page = editor_client.get(reverse("admin:batches_batch_change", args=[batch.pk])).content.decode()
    assert "Export 1 approved draft (zip)" in page


def test_the_draft_page_offers_both_downloads_once_approved(editor_client, make_batch):
    newsletter = approved(make_batch)
    page = editor_client.get(reverse("admin:batches_newsletter_change", args=[newsletter.pk])).content.decode()
    assert f'href="{export_url(newsletter, "md")}"' in page and f'href="{export_url(newsletter, "html")}"' in page


# --- Exports are sanitised exactly as the preview is ------------------------------------------------------------

SNEAKY_BODY = HOSTILE_BODY + """
[encoded](java&#115;cript:alert('entity')) and <JAVASCRIPT:alert('autolink')> and <https://example.com/ok>
<a href='jav	ascript:alert(1)'>tabbed</a> <STYLE>body { display: none }</STYLE> <!-- a hidden note -->
![tracking pixel](https://tracker.example/pixel.png)

[ref link][bad]

[bad]: javascript:alert('reference')

Code keeps its text: `<script>` stays visible, as in the preview.
"""
LEAKS = ("<script>alert", "onerror", "onclick", "javascript:", "&#115;cript", "jav\tascript", "<style",
         "display: none", "hidden note", "tracker.example")


def test_the_markdown_export_carries_nothing_the_preview_hid(make_batch):
    newsletter = approved(make_batch, body=SNEAKY_BODY)
    body = newsletter_markdown(newsletter).split("---\n", 2)[2]
    for leak in LEAKS:
        assert leak.lower() not in body.lower(), leak
    assert '<a href="https://example.com">a link</a>' in body and "<https://example.com/ok>" in body
    assert "`<script>` stays visible" in body


def test_the_markdown_export_renders_to_exactly_the_preview(editor_client, make_batch):
    from batches.export import render_markdown

    newsletter = approved(make_batch, body=SNEAKY_BODY)
    preview = editor_client.get(reverse("admin:batches_newsletter_change", args=[newsletter.pk])).context[
        "preview_html"]
    exported = newsletter_markdown(newsletter).split("---\n", 2)[2]
    assert render_markdown(exported) == preview


def test_the_html_export_carries_nothing_the_preview_hid(make_batch):
    html = newsletter_email_html(approved(make_batch, body=SNEAKY_BODY))
    for leak in LEAKS:
        assert leak.lower() not in html.lower(), leak


def test_the_email_ends_with_a_footer_and_an_unsubscribe_placeholder(make_batch):
    from batches.export import UNSUBSCRIBE_PLACEHOLDER

    html = newsletter_email_html(approved(make_batch))
    footer = html[html.rindex("<tr>"):]
    assert "you subscribed" in footer and f'<a href="{UNSUBSCRIBE_PLACEHOLDER}"' in footer and "Unsubscribe" in footer


# --- Code is kept as written only where every Markdown reader sees code -----------------------------------------

PAYLOAD = "<img src=x onerror=alert(document.cookie)>"
LIVE_HANDLER = re.compile(r"<[a-z][^<>]*\s(?:onerror|onmouseover)=", re.I)
FAKE_CODE = {
    # A backtick fence's info string holds no backtick: "```js`" opens no fence, the next line is a paragraph.
    "backtick in the info string": f"Intro.\n\n```js`\n{PAYLOAD}\n",
    # "~~~" does not close a "```" fence; the "```" that does must not open another.
    "fence closed by the other character": f"Intro.\n\n```\n~~~\n```\n{PAYLOAD}\n",
    # Runs of one and two backticks make no code span.
    "code span of unequal runs": f"Intro `x {PAYLOAD} ``\n",
    "code span across paragraphs": f"`x\n\n{PAYLOAD}\n\ny`",
    "code span after an escaped backtick": f"\\![x](y)`{PAYLOAD}`",
    # CommonMark reads a raw tag before a code span that starts inside it.
    "backticks inside a tag": '<img src="`" onerror=alert(1) x="`">',
    # An HTML block holds the fence lines under it as raw HTML.
    "fence under a block tag": f"<p>\n```\n{PAYLOAD}\n```\n",
    "fence under a tag alone on its line": f"<strong>\n```\n{PAYLOAD}\n```\n",
    "tag with a < in a quoted value": '<img src=x onerror="a<b">',
    "link cut out of an attribute": '<a title="[x](javascript:a">) " onmouseover="alert(1)" >',
    # Python-Markdown's attribute lists (the preview's `extra`) set any attribute on the element before them.
    "attribute list on a heading": "# Title {: onmouseover=alert(1) }\n\nText.",
    "attribute list on an inline element": "Some *word*{: onerror=alert(1) } here.",
}


@pytest.mark.parametrize("name", FAKE_CODE)
def test_the_markdown_export_keeps_no_html_the_preview_dropped_as_code(name, editor_client, make_batch):
    from batches.export import render_markdown

    body = FAKE_CODE[name]
    assert not LIVE_HANDLER.search(render_markdown(body))
    exported = editor_client.get(export_url(approved(make_batch, body=body), "md")).content.decode()
    assert not LIVE_HANDLER.search(exported), exported
    # and read by a Markdown renderer as the preview reads it (Python-Markdown with `extra`), unsanitised
    assert not LIVE_HANDLER.search(markdown.markdown(exported, extensions=["extra"])), exported


def test_an_attribute_list_of_only_an_id_and_a_class_is_kept(make_batch):
    body = newsletter_markdown(approved(make_batch, body="## Shipping {: #shipping .section }\n\nRates rose."))
    assert "## Shipping {: #shipping .section }" in body


def test_fenced_code_and_inline_code_are_exported_as_written(make_batch):
    fenced = "```html\n<script src=\"https://cdn.example/cart.js\"></script>\n<div class=\"promo\">10% off</div>\n```"
    inline = "Add `<meta name=\"robots\" content=\"noindex\">` to thin pages, and `a < b` holds."
    ticks = "A fence of four: ````\n```\nnested\n```\n````"
    body = newsletter_markdown(approved(make_batch, body=f"Paste this:\n\n{fenced}\n\n{inline}\n\n{ticks}\n"))
    assert fenced in body and inline in body and ticks in body
