"""Drafts as they will read: Markdown to safe HTML, and exports as Markdown, email-ready HTML or a zip of both.

One sanitiser serves the preview and every export alike: what the approver did not see (a script, an event
handler, a `javascript:` link) is in no export either.
"""
from __future__ import annotations

import html
import io
import json
import re
import zipfile
from collections.abc import Iterable

import markdown
import nh3
from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import slugify

from .grounding import cited_sources
from .models import Batch, Newsletter

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "b", "em", "i", "u", "s", "del", "code",
    "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "sup", "sub",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "th": {"align"}, "td": {"align"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}

# Email clients ignore <style> blocks and external stylesheets, so every element carries its own style.
FONT = "Georgia, 'Times New Roman', serif"
SANS = "-apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
EMAIL_STYLES = {
    "h1": f"font-family:{SANS};font-size:26px;line-height:1.25;color:#111827;margin:0 0 16px;",
    "h2": f"font-family:{SANS};font-size:21px;line-height:1.3;color:#111827;margin:28px 0 12px;",
    "h3": f"font-family:{SANS};font-size:18px;line-height:1.3;color:#111827;margin:24px 0 10px;",
    "h4": f"font-family:{SANS};font-size:16px;color:#111827;margin:20px 0 8px;",
    "p": f"font-family:{FONT};font-size:17px;line-height:1.6;color:#1f2933;margin:0 0 16px;",
    "ul": f"font-family:{FONT};font-size:17px;line-height:1.6;color:#1f2933;margin:0 0 16px;padding-left:24px;",
    "ol": f"font-family:{FONT};font-size:17px;line-height:1.6;color:#1f2933;margin:0 0 16px;padding-left:24px;",
    "li": "margin:0 0 6px;",
    "a": "color:#1d4ed8;text-decoration:underline;",
    "strong": "font-weight:bold;color:#111827;",
    "blockquote": "margin:0 0 16px;padding:4px 0 4px 16px;border-left:4px solid #d1d5db;color:#4b5563;",
    "code": "font-family:Menlo,Consolas,monospace;font-size:15px;background-color:#f3f4f6;padding:1px 4px;",
    "pre": "font-family:Menlo,Consolas,monospace;font-size:14px;background-color:#f3f4f6;padding:12px;"
           "overflow:auto;margin:0 0 16px;",
    "hr": "border:0;border-top:1px solid #e5e7eb;margin:24px 0;",
    "table": "border-collapse:collapse;margin:0 0 16px;",
    "th": f"font-family:{SANS};font-size:15px;border:1px solid #e5e7eb;padding:6px 10px;text-align:left;",
    "td": f"font-family:{FONT};font-size:15px;border:1px solid #e5e7eb;padding:6px 10px;",
}


UNSUBSCRIBE_PLACEHOLDER = "{{unsubscribe_url}}"  # replaced by the email service's own unsubscribe link

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_HIDDEN_ELEMENT = re.compile(r"<(script|style)\b[^>]*>.*?(?:</\1\s*>|\Z)", re.I | re.S)  # nh3 drops their text too
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s[^<>]*?)?)\s*/?>")
_ATTRIBUTE = re.compile(r"""([^\s"'<>/=]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'=<>`]+))?""")
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]{1,31}):[^\s<>]*>")
_LINK = re.compile(r"(!?)\[((?:[^\[\]\n]|\[[^\]\n]*\])*)\]\(\s*(<[^<>\n]*>|(?:[^\s()]|\([^\s()]*\))*)"
                   r"(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'|\([^)\n]*\)))?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]\n]+\]:[ \t]*(<[^<>\n]*>|\S+).*$\n?", re.M)
_CODE_SPAN = re.compile(r"(`+)[^`].*?\1", re.S)
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")


def _safe_url(url: str) -> bool:
    """Relative, or http(s)/mailto, once entities and the blanks browsers ignore are taken out."""
    plain = re.sub(r"[\x00-\x20\x7f]+", "", html.unescape(url.strip().strip("<>")))
    scheme = _SCHEME.match(plain)
    return scheme is None or scheme.group(1).lower() in URL_SCHEMES


def _clean_tag(match: re.Match) -> str:
    closing, name, attributes = match.group(1), match.group(2).lower(), match.group(3)
    if name not in ALLOWED_TAGS:
        return ""  # the tag goes, its text stays: as nh3 shows it
    if closing:
        return f"</{name}>"
    kept = []
    for attribute in _ATTRIBUTE.finditer(attributes):
        key, raw = attribute.group(1).lower(), (attribute.group(2) or "").strip("\"'")
        if key in ALLOWED_ATTRIBUTES.get(name, ()) and (key != "href" or _safe_url(raw)):
            kept.append(f' {key}="{html.escape(html.unescape(raw))}"')
    return f"<{name}{''.join(kept)}>"


def _clean_link(match: re.Match) -> str:
    image, text, url = match.group(1), match.group(2), match.group(3)
    if image:
        return ""  # no images: a newsletter body carries no remote asset (and the preview shows none)
    return match.group(0) if _safe_url(url) else text


def _clean_prose(text: str) -> str:
    text = _COMMENT.sub("", text)
    text = _HIDDEN_ELEMENT.sub("", text)
    text = _AUTOLINK.sub(lambda m: m.group(0) if m.group(1).lower() in URL_SCHEMES else "", text)
    text = _TAG.sub(_clean_tag, text)
    text = _LINK.sub(_clean_link, text)
    return _REFERENCE.sub(lambda m: m.group(0) if _safe_url(m.group(1)) else "", text)


def _clean_outside_code_spans(text: str) -> str:
    out, last = [], 0
    for span in _CODE_SPAN.finditer(text):
        out += [_clean_prose(text[last:span.start()]), span.group(0)]
        last = span.end()
    out.append(_clean_prose(text[last:]))
    return "".join(out)


def sanitize_markdown(text: str) -> str:
    """The Markdown with what the preview would not show taken out: scripts and styles with their text, tags and
    attributes outside the allowed set, links whose scheme is not http(s) or mailto, images. Code is left as
    written (it shows as text). The preview and every export start from this, so they cannot differ."""
    lines, chunk, out, fenced = (text or "").replace("\r\n", "\n").split("\n"), [], [], False

    def flush() -> None:
        if chunk:
            out.append(_clean_outside_code_spans("\n".join(chunk)))
            chunk.clear()

    for line in lines:
        if _FENCE.match(line):
            if not fenced:
                flush()
            fenced = not fenced
            out.append(line)
        elif fenced:
            out.append(line)
        else:
            chunk.append(line)
    flush()
    return "\n".join(out)


_LIST_ITEM = re.compile(r"^\s{0,3}(?:[-*+]|\d{1,3}[.)])\s+\S")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")


def _loosen_lists(text: str) -> str:
    """Put a blank line before a list that follows a paragraph line directly.

    Claude (like most people) writes "**What to do:**" and the first "- item" on the next line; CommonMark reads
    that as a list, Python-Markdown as one run-on paragraph. Fenced code is left as it is.
    """
    lines, out, fenced = text.replace("\r\n", "\n").split("\n"), [], False
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and _LIST_ITEM.match(line) and out and out[-1].strip() and not _LIST_ITEM.match(out[-1]) \
                and not out[-1].startswith((" ", "\t")):
            out.append("")
        out.append(line)
    return "\n".join(out)


def _to_html(text: str) -> str:
    return markdown.markdown(_loosen_lists(sanitize_markdown(text)), extensions=["extra", "sane_lists"],
                             output_format="html")


def render_markdown(text: str) -> SafeString:
    """Markdown to HTML that is safe to put in a page: scripts, event handlers and javascript: links removed."""
    return mark_safe(nh3.clean(_to_html(text), tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES,
                               url_schemes=URL_SCHEMES, link_rel="noopener noreferrer"))


def render_email_body(text: str) -> SafeString:
    """Like render_markdown, with inline styles on every element (whatever styles the text tried to set)."""
    return mark_safe(nh3.clean(
        _to_html(text), tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
        set_tag_attribute_values={tag: {"style": style} for tag, style in EMAIL_STYLES.items()},
    ))


def _escape_markdown(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", text)


def sources_markdown(newsletter: Newsletter) -> str:
    """The draft's Sources list (title and link of each source it cites), as Markdown; "" when it cites none."""
    lines = []
    for source in cited_sources(newsletter):
        title = _escape_markdown(" ".join((source["title"] or source["url"] or "Research notes").split()))
        url = source["url"].replace(" ", "%20").replace("(", "%28").replace(")", "%29")
        lines.append(f"- \\[{source['n']}\\] " + (f"[{title}]({url})" if url else title))
    return "## Sources\n\n" + "\n".join(lines) if lines else ""


def body_with_sources(newsletter: Newsletter) -> str:
    """The body as readers get it: the text, then its Sources list."""
    sources = sources_markdown(newsletter)
    return newsletter.body_markdown.strip() + (f"\n\n{sources}" if sources else "")


def export_basename(newsletter: Newsletter) -> str:
    stem = slugify(newsletter.subject)[:60].strip("-") or f"newsletter-{newsletter.pk}"
    return f"{newsletter.position + 1:02d}-{stem}"


def _quoted(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar: colons, quotes and newlines cannot break the header.
    return json.dumps(value, ensure_ascii=False)


def newsletter_markdown(newsletter: Newsletter) -> str:
    """The draft as a Markdown file with a small front-matter header (subject, preview text, topic)."""
    topic = newsletter.topic
    header = [
        "---",
        f"subject: {_quoted(newsletter.subject)}",
        f"preview_text: {_quoted(newsletter.preview_text)}",
        f"topic: {_quoted(topic.title)}",
        f"category: {_quoted(topic.category.slug)}",
    ]
    if topic.url:
        header.append(f"source_url: {_quoted(topic.url)}")
    header += [f"batch: {newsletter.batch_id}", "---", ""]
    return "\n".join(header) + "\n" + sanitize_markdown(body_with_sources(newsletter)).strip() + "\n"


def newsletter_email_html(newsletter: Newsletter) -> str:
    """The draft as one self-contained HTML email: inline styles, no external asset, preview text as preheader."""
    return render_to_string("batches/newsletter_email.html", {
        "subject": newsletter.subject,
        "preview_text": newsletter.preview_text,
        "body": render_email_body(body_with_sources(newsletter)),
        "styles": EMAIL_STYLES,
        "unsubscribe_url": UNSUBSCRIBE_PLACEHOLDER,
    })


def drafts_zip(newsletters: Iterable[Newsletter]) -> bytes:
    """A zip holding each draft twice: `NN-subject.md` and `NN-subject.html`."""
    buffer = io.BytesIO()
    used: set[str] = set()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for newsletter in newsletters:
            name = export_basename(newsletter)
            if name in used:  # two batches can share a position; the id keeps names apart
                name = f"{name}-{newsletter.pk}"
            used.add(name)
            archive.writestr(f"{name}.md", newsletter_markdown(newsletter))
            archive.writestr(f"{name}.html", newsletter_email_html(newsletter))
    return buffer.getvalue()


def approved_drafts(*, batch: Batch | None = None, ids: Iterable[int] | None = None):
    """Approved drafts, ready to export, with what the export reads in the same query."""
    queryset = Newsletter.objects.filter(status=Newsletter.Status.APPROVED).select_related("topic__category")
    if batch is not None:
        queryset = queryset.filter(batch=batch)
    if ids is not None:
        queryset = queryset.filter(pk__in=list(ids))
    return queryset.order_by("batch_id", "position", "pk")
