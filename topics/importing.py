"""Import topics from a CSV (header row) or JSON (list of objects) file, all-or-nothing by default."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.utils.dateparse import parse_datetime

from .categorize import categorize_text, topic_text
from .dedupe import canonical_url
from .models import Category, Topic

FIELDS = ("title", "summary", "url", "source", "external_id", "score", "category", "status", "published_at")
IMPORTABLE_STATUSES = (Topic.Status.NEW, Topic.Status.APPROVED)
_url_validator = URLValidator(schemes=["http", "https"])


@dataclass(frozen=True)
class RowError:
    row: int
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.message}"


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[RowError] = field(default_factory=list)


class ImportFailed(Exception):
    """The file (or some of its rows) is invalid; nothing was written."""

    def __init__(self, errors: list[RowError] | str):
        self.errors = [RowError(0, errors)] if isinstance(errors, str) else errors
        super().__init__("; ".join(str(e) for e in self.errors))


@dataclass(frozen=True)
class TopicRow:
    row: int
    title: str
    summary: str
    url: str
    source: str
    external_id: str
    score: float
    category: Category | None
    status: str
    published_at: datetime | None


def read_records(path: Path) -> list[dict[str, Any]]:
    """Read the raw records of a CSV or JSON file, by extension."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ImportFailed(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ImportFailed(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:  # a directory, no permission, a device error
        raise ImportFailed(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImportFailed(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        if not isinstance(data, list):
            raise ImportFailed(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        return data
    if suffix == ".csv":
        # newline="" hands the csv module the raw line endings, so a quoted field keeps its line breaks;
        # strict turns a broken quote into an error instead of a row that silently swallows the next ones.
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        try:
            fieldnames = reader.fieldnames
        except csv.Error as exc:
            raise ImportFailed(f"{path}: malformed CSV header row ({exc})") from None
        if not fieldnames or "title" not in [f.strip() for f in fieldnames]:
            raise ImportFailed(f"{path}: the CSV header row must name a 'title' column")
        records: list[dict[str, Any]] = []
        try:
            for record in reader:
                if None in record:
                    records.append({"__error__": "more values than header columns"})
                    continue
                records.append({(k or "").strip(): v for k, v in record.items()})
        except csv.Error as exc:
            # Past a broken quote no later row can be trusted: the whole file is refused, even with --skip-invalid.
            raise ImportFailed([RowError(len(records) + 1, f"malformed CSV ({exc})")]) from None
        return records
    raise ImportFailed(f"{path}: unknown file type {suffix or '(none)'}; use .csv or .json")


def _text(value: Any, *, name: str, max_length: int | None = None) -> str:
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    text = str(value).strip()
    if "\x00" in text:
        # PostgreSQL refuses NUL in text columns: report it with its row number, not as a database error.
        raise ValueError(f"{name} contains a NUL character")
    if max_length and len(text) > max_length:
        raise ValueError(f"{name} is longer than {max_length} characters")
    return text


def _score(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0.0
    if isinstance(value, bool):
        raise ValueError("score must be a number")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"score must be a number, got {value!r}") from None
    if not math.isfinite(score):
        raise ValueError(f"score must be a finite number, got {value!r}")
    if score < 0:
        raise ValueError(f"score must be 0 or more, got {value!r}")
    return score


def _published_at(value: Any) -> datetime | None:
    text = _text(value, name="published_at")
    if not text:
        return None
    try:
        parsed = parse_datetime(text) or datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"published_at is not an ISO 8601 date-time: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt_timezone.utc)
    return parsed


def derive_external_id(*, url: str, title: str) -> str:
    basis = f"url:{canonical_url(url)}" if url else f"title:{' '.join(title.lower().split())}"
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def validate_record(*, row: int, record: Any, categories: dict[str, Category]) -> TopicRow:
    if not isinstance(record, dict):
        raise ValueError(f"expected an object with a title, got {type(record).__name__}")
    if "__error__" in record:
        raise ValueError(record["__error__"])
    problems: list[str] = []

    def check(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            problems.append(str(exc))
            return None

    title = check(_text, record.get("title"), name="title", max_length=500)
    if title == "":
        problems.append("title is required")
    summary = check(_text, record.get("summary"), name="summary") or ""
    url = check(_text, record.get("url"), name="url", max_length=1000) or ""
    if url:
        try:
            _url_validator(url)
        except ValidationError:
            problems.append(f"url is not a valid http(s) URL: {url!r}")
    source = check(_text, record.get("source"), name="source", max_length=40) or "import"
    external_id = check(_text, record.get("external_id"), name="external_id", max_length=300) or ""
    score = check(_score, record.get("score"))
    slug = check(_text, record.get("category"), name="category") or ""
    category = None
    if slug:
        category = categories.get(slug)
        if category is None:
            problems.append(f"unknown category {slug!r} (known: {', '.join(sorted(categories))})")
    status = check(_text, record.get("status"), name="status") or Topic.Status.NEW
    if status not in IMPORTABLE_STATUSES:
        problems.append(f"status must be 'new' or 'approved', got {status!r}")
    published_at = check(_published_at, record.get("published_at"))
    if problems:
        raise ValueError("; ".join(problems))
    return TopicRow(
        row=row,
        title=title,
        summary=summary,
        url=url,
        source=source,
        external_id=external_id or derive_external_id(url=url, title=title),
        score=score,
        category=category,
        status=status,
        published_at=published_at,
    )


def import_topics(*, path: Path, skip_invalid: bool = False) -> ImportResult:
    """Import the topics in `path`; idempotent on (source, external_id).

    Any invalid row fails the whole import (nothing written) unless `skip_invalid`, which imports the valid
    rows and reports the others. Existing topics get their content refreshed; their review status and an
    editor's category choice are kept.
    """
    records = read_records(path)
    categories = {c.slug: c for c in Category.objects.all()}
    if not categories:
        raise ImportFailed("no categories exist: run `manage.py migrate` first")
    rows: list[TopicRow] = []
    errors: list[RowError] = []
    seen: dict[tuple[str, str], int] = {}
    for number, record in enumerate(records, start=1):
        try:
            row = validate_record(row=number, record=record, categories=categories)
        except ValueError as exc:
            errors.append(RowError(number, str(exc)))
            continue
        key = (row.source, row.external_id)
        if key in seen:
            errors.append(RowError(number, f"same source and external_id as row {seen[key]}"))
            continue
        seen[key] = number
        rows.append(row)
    if errors and not skip_invalid:
        raise ImportFailed(errors)
    result = _write(rows=rows, categories=list(categories.values()))
    result.skipped = errors
    return result


@transaction.atomic
def _write(*, rows: list[TopicRow], categories: list[Category]) -> ImportResult:
    result = ImportResult()
    existing = {}
    for source in {r.source for r in rows}:
        ids = [r.external_id for r in rows if r.source == source]
        for start in range(0, len(ids), 500):
            for topic in Topic.objects.filter(source=source, external_id__in=ids[start : start + 500]):
                existing[(topic.source, topic.external_id)] = topic
    to_create, to_update = [], []
    content_fields = ("title", "summary", "url", "score", "published_at")
    for row in rows:
        topic = existing.get((row.source, row.external_id))
        if topic is None:
            category = row.category or categorize_text(
                text=topic_text(title=row.title, summary=row.summary), categories=categories
            )
            to_create.append(
                Topic(
                    title=row.title,
                    summary=row.summary,
                    url=row.url,
                    canonical_url=canonical_url(row.url),
                    source=row.source,
                    external_id=row.external_id,
                    sources=[row.source],
                    score=row.score,
                    category=category,
                    category_locked=row.category is not None,
                    status=row.status,
                    published_at=row.published_at,
                )
            )
            continue
        if all(getattr(topic, f) == getattr(row, f) for f in content_fields):
            result.unchanged += 1
            continue
        for f in content_fields:
            setattr(topic, f, getattr(row, f))
        topic.canonical_url = canonical_url(row.url)
        if not topic.category_locked:
            topic.category = row.category or categorize_text(
                text=topic_text(title=row.title, summary=row.summary), categories=categories
            )
        to_update.append(topic)
    Topic.objects.bulk_create(to_create, batch_size=500)
    Topic.objects.bulk_update(to_update, [*content_fields, "canonical_url", "category"], batch_size=500)
    result.created, result.updated = len(to_create), len(to_update)
    return result
