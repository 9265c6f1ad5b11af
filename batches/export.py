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
_ANGLE = re.compile(rf"(?P<autolink>{_AUTOLINK.pattern})|(?P<tag>{_TAG.pattern})|<")
_BLOCK_TAG = re.compile(r"</?(?:p|h[1-6]|hr|blockquote|ul|ol|li|table|thead|tbody|tr|th|td|pre)\b")
_BACKTICKS = re.compile(r"`+")
_TAG_START = re.compile(r"<[a-zA-Z/!?]")
_MASK = re.compile(r"\ue000(\d+)\ue001")
# A line that CommonMark or Python-Markdown may take for a code fence.
_MAYBE_FENCE = re.compile(r"^ {0,3}(?:`{3,}|~{3,})")
# An info string both read alike: a bare language name (Python-Markdown takes no other words, CommonMark no backtick).
_PLAIN_INFO = re.compile(r"[ ]*\.?[\w#.+-]*[ ]*")
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
# An attribute list of Python-Markdown's attr_list ("# Title {: onclick=...}"), which the preview's `extra` turns into
# attributes: one that sets anything but an id or a class is taken out (the preview drops those attributes too).
_ATTRIBUTE_LIST = re.compile(r"\{:?[ ]*[^}\n ][^}\n]*=[^}\n]*\}")


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


def _clean_angle(match: re.Match) -> str:
    if match.group("autolink"):
        return match.group(0) if match.group(2).lower() in URL_SCHEMES else ""
    if match.group("tag"):
        return _clean_tag(_TAG.fullmatch(match.group(0)))
    return "&lt;"  # no tag: a `<` left bare could still open one for another reader (`<img src="a<b" ...>`)


def _clean_prose(text: str) -> str:
    """Text with no code kept: every `<` left is an allowed tag rebuilt from its safe attributes, or an http(s)/mailto
    autolink. Cleaning links can cut a tag open and cleaning tags can join a link up, so both run until neither
    changes anything."""
    while True:
        cleaned = _LINK.sub(_clean_link, text)
        cleaned = _REFERENCE.sub(lambda m: m.group(0) if _safe_url(m.group(1)) else "", cleaned)
        cleaned = _ANGLE.sub(_clean_angle, _HIDDEN_ELEMENT.sub("", _COMMENT.sub("", cleaned)))
        cleaned = _ATTRIBUTE_LIST.sub("", cleaned)
        if cleaned == text:
            return cleaned
        text = cleaned


def _code_spans(paragraph: str) -> list[tuple[int, int]] | None:
    """The code spans of a paragraph where CommonMark and Python-Markdown both see them: runs of backticks of equal
    length, on one line, holding no `|` (a table row splits there first). None when any backtick could be read
    otherwise: a run with no partner, one after a backslash, a span across lines."""
    runs, spans, i = list(_BACKTICKS.finditer(paragraph)), [], 0
    while i < len(runs):
        opening = runs[i]
        partner = next((j for j in range(i + 1, len(runs)) if len(runs[j].group()) == len(opening.group())), None)
        if partner is None or paragraph[opening.start() - 1:opening.start()] == "\\":
            return None
        span = (opening.start(), runs[partner].end())
        if "\n" in paragraph[span[0]:span[1]] or "|" in paragraph[span[0]:span[1]]:
            return None
        spans.append(span)
        i = partner + 1
    return spans


def _plain_code_spans(paragraph: str) -> list[tuple[int, int]] | None:
    """The code spans of a paragraph with nothing outside them that could start raw HTML (which would change how they
    read), or None."""
    spans = _code_spans(paragraph) if "\ue000" not in paragraph and "\ue001" not in paragraph else None
    if spans is None:
        return None
    outside, last = [], 0
    for start, end in spans:
        outside.append(paragraph[last:start])
        last = end
    return None if _TAG_START.search("".join(outside) + paragraph[last:]) else spans


def _clean_paragraph(paragraph: str) -> str | None:
    """The paragraph cleaned, its code spans left as written where they are certainly code; None when it keeps a
    block-level tag, which may hold the following paragraphs as raw HTML (Python-Markdown reads up to its closing
    tag, CommonMark a `<pre>` too)."""
    spans = _plain_code_spans(paragraph)
    if spans:
        code = [paragraph[start:end] for start, end in spans]
        masked, last = [], 0
        for n, (start, end) in enumerate(spans):
            masked += [paragraph[last:start], f"\ue000{n}\ue001"]
            last = end
        cleaned = _MASK.sub(lambda m: code[int(m.group(1))], _clean_prose("".join(masked) + paragraph[last:]))
        if _plain_code_spans(cleaned) is not None:  # dropping a link must not have joined or escaped a backtick
            return cleaned
    cleaned = _clean_prose(paragraph)
    return None if _BLOCK_TAG.search(cleaned) else cleaned


def _plain_fence(lines: list[str], start: int) -> int | None:
    """The index of the line closing the fenced code opened at lines[start], when CommonMark and Python-Markdown
    both read it so: opened at the margin with a plain info string and closed, at the margin, by the same run (the
    first line CommonMark takes as closing). None otherwise."""
    opening = re.match(r"(`{3,}|~{3,})(.*)$", lines[start])
    if not opening or not _PLAIN_INFO.fullmatch(opening.group(2)):
        return None
    run = opening.group(1)
    closing = re.compile(rf" {{0,3}}{run[0]}{{{len(run)},}}[ \t]*$")
    for end in range(start + 1, len(lines)):
        if closing.match(lines[end]):
            return end if lines[end].rstrip(" ") == run else None
    return None  # unclosed: code to the end for CommonMark, no code at all for Python-Markdown


def sanitize_markdown(text: str) -> str:
    """The Markdown with what the preview would not show taken out: scripts and styles with their text, tags and
    attributes outside the allowed set, links whose scheme is not http(s) or mailto, images. The preview and every
    export start from this, so they cannot differ.

    Code is left as written (it shows as text) only where CommonMark and Python-Markdown both certainly read code:
    a text kept raw as code would be live HTML to a renderer that reads it as a paragraph. From the first fence or
    block-level tag either might read otherwise, nothing more is kept as code and every other `<` is escaped."""
    lines = (text or "").replace("\r\n", "\n").split("\n")
    out: list[str] = []
    start = i = 0  # lines[start:i]: the paragraph being read
    raw_tag_above = False
    while i <= len(lines):
        at_end = i == len(lines)
        if not at_end and lines[i].strip() and not _MAYBE_FENCE.match(lines[i]):
            i += 1
            continue
        if start < i:
            paragraph = _clean_paragraph("\n".join(lines[start:i]))
            if paragraph is None:
                break
            out.append(paragraph)
            raw_tag_above = _plain_code_spans(paragraph) is None and _TAG.search(paragraph) is not None
            start = i
        if at_end:
            return "\n".join(out)
        if not lines[i].strip():
            end, raw_tag_above = i, False
        elif raw_tag_above:  # a line holding only a tag opens an HTML block, which a fence right under it is part of
            break
        else:
            end = _plain_fence(lines, i)
            if end is None:
                break
        out += lines[i:end + 1]
        i = start = end + 1
    return "\n".join(out + [_clean_prose("\n".join(lines[start:]))])


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
