"""Import topics from a CSV (header row) or JSON (list of objects) file, all-or-nothing by default.

The file is streamed twice, a chunk at a time, so memory stays flat whatever its length: a first pass validates
every row (nothing is written while any row is invalid), a second pass validates again and writes, inside one
transaction, what is new or changed. Each imported topic keeps a hash of the record it came from, so a record
imported before exactly as it is now is recognised by an indexed lookup of its key, without validating or writing it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import stat
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple, TextIO
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import DatabaseError, IntegrityError, connection, reset_queries, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .categorize import KeywordTable, topic_text
from .dedupe import canonical_url
from .models import Category, Topic

FIELDS = ("title", "summary", "url", "source", "external_id", "score", "category", "status", "published_at")
IMPORTABLE_STATUSES = (Topic.Status.NEW, Topic.Status.APPROVED)
SUFFIXES = (".csv", ".json")
TITLE_MAX_CHARS, SUMMARY_MAX_CHARS, URL_MAX_CHARS = 500, 10_000, 1000
EARLIEST_YEAR, LATEST_YEAR = 1970, 2100
# Rows validated and written together: large enough that the per-chunk queries are few, small enough that a chunk's
# topics never weigh more than a few megabytes.
CHUNK_ROWS = 2000
# The errors listed one by one; past these, only their count is given.
MAX_REPORTED_ERRORS = 50
# A JSON item larger than this is refused instead of being buffered (a topic is a few kilobytes at most).
MAX_ITEM_CHARS = 1_000_000
_HASH_VERSION = "1"
_NUMBER_TYPES = frozenset({int, float, Decimal})  # not bool: True is no title or score
_url_validator = URLValidator(schemes=["http", "https"])


@dataclass(frozen=True)
class RowError:
    number: int
    message: str
    unit: str = "row"

    def __str__(self) -> str:
        return f"{self.unit} {self.number}: {self.message}"


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[RowError] = field(default_factory=list)  # the first MAX_REPORTED_ERRORS skipped rows
    skipped_count: int = 0


class ImportFailed(Exception):
    """The file, or some of its rows, is invalid; nothing was written.

    `problem` is a file-level problem (the file cannot be read, or reading stopped at a row); `errors` are the first
    row errors, `error_count` how many rows were invalid in all.
    """

    def __init__(self, problem: str = "", *, errors: list[RowError] | None = None, error_count: int | None = None):
        self.problem = problem
        self.errors = errors or []
        self.error_count = len(self.errors) if error_count is None else error_count
        super().__init__(problem or "; ".join(str(e) for e in self.errors))


@dataclass(frozen=True)
class TopicRow:
    number: int
    title: str
    summary: str
    url: str
    canonical_url: str
    source: str
    external_id: str
    score: float
    category: Category | None
    status: str
    published_at: datetime | None
    import_hash: str


# --- reading --------------------------------------------------------------------------------------


class _CappedReader(io.RawIOBase):
    """The file's bytes, refusing to read past `max_bytes` (a file that grows after its size was checked) and
    hashing what it reads, so the second pass can tell that it read the very bytes the first pass validated."""

    def __init__(self, raw: io.FileIO, *, max_bytes: int):
        self.raw, self.max_bytes, self.read_bytes = raw, max_bytes, 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.raw.readinto(buffer)
        if count:
            self.read_bytes += count
            if self.read_bytes > self.max_bytes:
                raise ImportFailed(f"the file grew past the import limit of {self.max_bytes:,} bytes while being read")
            self.digest.update(memoryview(buffer)[:count])
        return count

    def close(self) -> None:
        self.raw.close()
        super().close()


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
)


def open_import_file(path: Path, *, max_bytes: int) -> _CappedReader:
    """Open `path` for import after checking, before reading a byte, its extension, that it is a regular file
    (never a device such as /dev/zero, a FIFO that would block, or a directory) and its size."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ImportFailed(f"unknown file type {suffix or '(none)'}; use .csv or .json")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the checks below refuse it on the open descriptor,
        # so the file checked is the file read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImportFailed("no such file") from None
    except OSError as exc:  # no permission, a directory on some systems, a device error
        raise ImportFailed(f"cannot read the file ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((kind for is_kind, kind in _FILE_KINDS if is_kind(info.st_mode)), "something else")
            raise ImportFailed(f"cannot read the file: it is {kind}, not a regular file")
        if info.st_size > max_bytes:
            raise ImportFailed(
                f"the file is {info.st_size:,} bytes, over the import limit of {max_bytes:,} bytes (IMPORT_MAX_BYTES)"
            )
        os.set_blocking(fd, True)
        return _CappedReader(io.FileIO(fd, "rb", closefd=True), max_bytes=max_bytes)
    except BaseException:
        os.close(fd)
        raise


# The csv module refuses a field over 131,072 characters as malformed; a field that long is an invalid row (or, past
# what a JSON item may hold, a file refused whole), not a broken file.
csv.field_size_limit(max(csv.field_size_limit(), MAX_ITEM_CHARS))


def _csv_records(text: TextIO) -> Iterator[tuple[int, dict[str, Any]]]:
    """(spreadsheet row number, record): the header is row 1, so the first data row is row 2; a quoted field with
    line breaks still makes one row, and a blank line is an (empty, skipped) row, as a spreadsheet shows them."""
    # strict turns a broken quote into an error instead of a row that silently swallows the next ones.
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ImportFailed(f"malformed CSV header row ({exc})") from None
    names = [name.strip() for name in header or ()]
    if "title" not in names:
        raise ImportFailed("the CSV header row must name a 'title' column")
    number = 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # Past a broken quote no later row can be trusted: the whole file is refused, even with --skip-invalid.
            raise ImportFailed(f"row {number + 1}: malformed CSV ({exc})") from None
        number += 1
        if not values:
            continue
        if len(values) > len(names):
            yield number, {"__error__": "more values than header columns"}
        else:
            yield number, dict(zip(names, values))


def _parse_int(text: str) -> int | Decimal:
    # Python refuses to turn more than 4,300 digits into an int (a ValueError mid-parse); keep such a number as a
    # Decimal so that it reaches validation and becomes a row error.
    return int(text) if len(text) <= 20 else Decimal(text)


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_JSON_KINDS = {"{": "an object", '"': "a string", "t": "true", "f": "false", "n": "null"}


class _JsonList:
    """The items of a top-level JSON list, decoded one at a time from a text stream.

    Each item goes through the standard library's C decoder (`raw_decode`), which refuses deep nesting with a
    RecursionError instead of exhausting memory. A general streaming parser was tried and rejected: ijson builds
    items with memory growing with the square of their depth (20,000 levels took 1 GB). The only state kept is the
    unread text of the current item, at most MAX_ITEM_CHARS.
    """

    READ_CHARS = 1 << 16

    def __init__(self, text: TextIO):
        self.text = text
        self.buffer, self.pos, self.eof = "", 0, False
        self.lines_dropped, self.column_base = 0, 0
        self.decoder = json.JSONDecoder(parse_int=_parse_int)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        first = self._next_char()
        if first is None:
            raise ImportFailed("the file is empty; expected a JSON list of objects")
        if first != "[":
            got = _JSON_KINDS.get(first, "a number" if first in "-0123456789" else None)
            if got is None:
                raise self._invalid(self.pos, "Expecting value")
            raise ImportFailed(f"expected a JSON list of objects, got {got}")
        self.pos += 1
        number = 0
        if self._next_char() == "]":
            self.pos += 1
        else:
            while True:
                number += 1
                yield number, self._item(number)
                char = self._next_char()
                if char == ",":
                    self.pos += 1
                    self._next_char()
                    continue
                if char == "]":
                    self.pos += 1
                    break
                if char is None:
                    raise self._invalid(self.pos, "the list is not closed (unexpected end of file)")
                raise self._invalid(self.pos, "Expecting ',' delimiter")
        if self._next_char() is not None:
            raise self._invalid(self.pos, "Extra data after the list")

    def _item(self, number: int) -> Any:
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as exc:
                # Text that merely stops early (the rest of the item is in the next read) fails at its very end, or
                # inside a string still open; any other failure is a real syntax error, reported at once.
                cut_short = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buffer) - 6
                if cut_short and self._read_more(number):
                    continue
                raise self._invalid(exc.pos, exc.msg) from None
            except RecursionError:
                raise ImportFailed(f"item {number}: nested too deeply (a topic is one flat object)") from None
            # A number or a literal ending exactly at the end of what was read may go on in the next read.
            if end == len(self.buffer) and self._read_more(number):
                continue
            self.pos = end
            return value

    def _next_char(self) -> str | None:
        """The next character that is not whitespace, without consuming it; None at the end of the file."""
        while True:
            self.pos = _WHITESPACE.match(self.buffer, self.pos).end()
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if not self._read_more(None):
                return None

    def _read_more(self, number: int | None) -> bool:
        if self.eof:
            return False
        if number is not None and len(self.buffer) - self.pos > MAX_ITEM_CHARS:
            raise ImportFailed(f"item {number}: larger than {MAX_ITEM_CHARS:,} characters")
        chunk = self.text.read(self.READ_CHARS)
        if not chunk:
            self.eof = True
            return False
        if self.pos:
            dropped = self.buffer[: self.pos]
            newlines = dropped.count("\n")
            if newlines:
                self.lines_dropped += newlines
                self.column_base = len(dropped) - dropped.rfind("\n") - 1
            else:
                self.column_base += len(dropped)
            self.buffer, self.pos = self.buffer[self.pos :], 0
        self.buffer += chunk
        return True

    def _invalid(self, pos: int, message: str) -> ImportFailed:
        line = self.lines_dropped + self.buffer.count("\n", 0, pos) + 1
        newline = self.buffer.rfind("\n", 0, pos)
        column = pos - newline if newline >= 0 else self.column_base + pos + 1
        return ImportFailed(f"invalid JSON at line {line}, column {column}: {message}")


@dataclass
class _Pass:
    """One streaming read of the file: its records, then (once they are exhausted) the digest of the bytes read."""

    reader: _CappedReader
    records: Iterator[tuple[int, Any]]
    unit: str

    @property
    def digest(self) -> bytes:
        return self.reader.digest.digest()


def _read(path: Path, *, max_bytes: int) -> _Pass:
    reader = open_import_file(path, max_bytes=max_bytes)
    buffered = io.BufferedReader(reader, buffer_size=1 << 16)
    if path.suffix.lower() == ".json":
        text = io.TextIOWrapper(buffered, encoding="utf-8-sig", errors="surrogateescape")
        return _Pass(reader, _decoded(iter(_JsonList(text)), text, unit="item"), "item")
    # newline="" hands the csv module the raw line endings, so a quoted field keeps its line breaks.
    text = io.TextIOWrapper(buffered, encoding="utf-8-sig", errors="surrogateescape", newline="")
    return _Pass(reader, _decoded(_csv_records(text), text, unit="row"), "row")


def _decoded(records: Iterator[tuple[int, Any]], text: TextIO, *, unit: str) -> Iterator[tuple[int, Any]]:
    """The records, with the file closed at the end and bytes that are not UTF-8 reported where they were met."""
    number = 0
    try:
        for number, record in records:
            yield number, record
    except UnicodeDecodeError as exc:
        where = f" after {unit} {number}" if number else ""
        raise ImportFailed(f"not UTF-8 text ({exc.reason}{where})") from None
    finally:
        text.close()


# --- validation -----------------------------------------------------------------------------------


def _shown(value: Any, limit: int = 60) -> str:
    """A value quoted for an error line, cut so that a 5,000-character value still makes one readable line."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _text(value: Any, *, name: str, max_length: int | None = None) -> str:
    if value is None:
        return ""
    if not isinstance(value, (str, int, float, Decimal)) or isinstance(value, bool):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    text = str(value).strip()
    if max_length and len(text) > max_length:
        raise ValueError(f"{name} is longer than {max_length:,} characters ({len(text):,})")
    if "\x00" in text:
        # PostgreSQL refuses NUL in text columns: report it with its row number, not as a database error.
        raise ValueError(f"{name} contains a NUL character")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape: no database can store it
            if re.search("[\udc80-\udcff]", text):
                raise ValueError(f"{name} is not UTF-8 text") from None
            raise ValueError(f"{name} contains an invalid character (a lone UTF-16 surrogate)") from None
    return text


def _score(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError("score must be a number")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"score must be a number, got {_shown(value)}") from None
    if not math.isfinite(score):  # also a number too large for a float: a 5,000-digit score becomes inf
        raise ValueError(f"score must be a finite number, got {_shown(value)}")
    if score < 0:
        raise ValueError(f"score must be 0 or more, got {_shown(value)}")
    return score


def _published_at(value: Any) -> datetime | None:
    text = _text(value, name="published_at", max_length=64)
    if not text:
        return None
    try:
        parsed = parse_datetime(text) or datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"published_at is not an ISO 8601 date-time: {_shown(text)}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # The range is checked in UTC, which is what the database stores: 9999-12-31T23:59:59-12:00 is in year 10000
    # there, a value PostgreSQL accepts but psycopg cannot read back.
    try:
        in_utc = parsed.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or not EARLIEST_YEAR <= in_utc.year <= LATEST_YEAR:
        raise ValueError(f"published_at must be between {EARLIEST_YEAR} and {LATEST_YEAR} (in UTC), got {_shown(text)}")
    return in_utc


def _url(value: Any) -> tuple[str, str]:
    """The URL and its canonical form."""
    url = _text(value, name="url", max_length=URL_MAX_CHARS)
    if not url:
        return "", ""
    try:
        _url_validator(url)
        port = urlsplit(url).port  # URLValidator lets any five digits through; urlsplit refuses > 65535
        if port is not None and not 1 <= port <= 65535:
            raise ValueError
        return url, canonical_url(url)
    except (ValidationError, ValueError):
        raise ValueError(f"url is not a valid http(s) URL: {_shown(url)}") from None


def derive_external_id(*, url: str, title: str) -> str:
    basis = f"url:{canonical_url(url)}" if url else f"title:{' '.join(title.lower().split())}"
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def validate_record(*, number: int, record: Any, categories: dict[str, Category]) -> TopicRow:
    """The row as it will be stored, or ValueError naming every problem of the row."""
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

    title = check(_text, record.get("title"), name="title", max_length=TITLE_MAX_CHARS)
    if title == "":
        problems.append("title is required")
    summary = check(_text, record.get("summary"), name="summary", max_length=SUMMARY_MAX_CHARS) or ""
    url, canonical = check(_url, record.get("url")) or ("", "")
    source = check(_text, record.get("source"), name="source", max_length=40) or "import"
    external_id = check(_text, record.get("external_id"), name="external_id", max_length=300) or ""
    score = check(_score, record.get("score"))
    slug = check(_text, record.get("category"), name="category", max_length=64) or ""
    category = None
    if slug:
        category = categories.get(slug)
        if category is None:
            problems.append(f"unknown category {_shown(slug)} (known: {', '.join(sorted(categories))})")
    status = check(_text, record.get("status"), name="status", max_length=64) or Topic.Status.NEW
    if status not in IMPORTABLE_STATUSES:
        problems.append(f"status must be 'new' or 'approved', got {_shown(status)}")
    published_at = check(_published_at, record.get("published_at"))
    if problems:
        raise ValueError("; ".join(problems))
    return TopicRow(
        number=number,
        title=title,
        summary=summary,
        url=url,
        canonical_url=canonical,
        source=source,
        external_id=external_id or derive_external_id(url=url, title=title),
        score=score,
        category=category,
        status=status,
        published_at=published_at,
        import_hash=record_hash(record),
    )


def record_hash(record: dict[str, Any]) -> str:
    """A hash of the fields a record imports, as written in the file ("" when one is not plain text or a number).

    A topic stores the hash of the record it was last imported from: a record with the same hash and the same
    (source, external_id) was valid then and would change nothing now, so it is neither validated nor written
    again. _HASH_VERSION changes whenever validation or storage rules change, so that no hash outlives them.
    """
    parts = [_HASH_VERSION]
    for value in map(record.get, FIELDS):
        kind = type(value)
        if kind is str:
            parts.append(value)
        elif value is None:
            parts.append("")  # a missing field and an empty one import alike
        elif kind in _NUMBER_TYPES:
            parts.append(str(value))  # 7 and "7" import alike
        else:
            return ""
    # Joined with NUL, which validation refuses in every field: a stored hash always comes from a record without
    # NUL, and such records are told apart exactly by their NUL-joined text.
    return hashlib.blake2b("\x00".join(parts).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def record_key(record: Any) -> tuple[str, str] | None:
    """(source, external_id) as validation would make it, when the record names its external_id in plain text."""
    if not isinstance(record, dict):
        return None
    source, external_id = record.get("source"), record.get("external_id")
    if isinstance(external_id, int) and not isinstance(external_id, bool):
        external_id = str(external_id)
    if not isinstance(external_id, str) or not (source is None or isinstance(source, str)):
        return None
    external_id, source = external_id.strip(), (source or "").strip() or "import"
    # A key no database can store (validation refuses it) is not looked up: the database would refuse the query.
    return (source, external_id) if external_id and _storable(external_id) and _storable(source) else None


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


# --- the two passes -------------------------------------------------------------------------------


class _Record(NamedTuple):
    index: int  # position in the file, from 0
    number: int  # row or item number, as reported
    record: Any
    key: tuple[str, str] | None
    digest: str


def _chunks(records: Iterator[tuple[int, Any]], *, size: int) -> Iterator[list[_Record]]:
    chunk: list[_Record] = []
    for index, (number, record) in enumerate(records):
        digest = record_hash(record) if isinstance(record, dict) else ""
        chunk.append(_Record(index, number, record, record_key(record) if digest else None, digest))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def stored_by_key(keys: list[tuple[str, str]], column: str) -> dict[tuple[str, str], Any]:
    """`column` of the stored topics with these (source, external_id) keys, by key: one indexed lookup per key."""
    if not keys:
        return {}
    if connection.vendor == "postgresql":
        return _stored_postgresql(keys, column)
    # SQLite plans "source = ? AND external_id IN (...)" on both columns of the unique index (a test checks it).
    # Written in SQL: the ORM's preparation of each value was a fifth of the CPU of an unchanged re-import.
    table, value = _quoted(column)
    by_source: dict[str, list[str]] = {}
    for source, external_id in keys:
        by_source.setdefault(source, []).append(external_id)
    stored: dict[tuple[str, str], Any] = {}
    with connection.cursor() as cursor:
        for source, external_ids in by_source.items():
            for start in range(0, len(external_ids), 500):
                part = external_ids[start : start + 500]
                cursor.execute(
                    f"SELECT external_id, {value} FROM {table} WHERE source = %s AND external_id IN "
                    f"({', '.join(['%s'] * len(part))})",
                    [source, *part],
                )
                stored.update(((source, e), found) for e, found in cursor.fetchall())
    return stored


def _quoted(column: str) -> tuple[str, str]:
    """The topic table's name and `column`'s, quoted for SQL."""
    quote = connection.ops.quote_name
    return quote(Topic._meta.db_table), quote(Topic._meta.get_field(column).column)


def _stored_postgresql(keys: list[tuple[str, str]], column: str) -> dict[tuple[str, str], Any]:
    cursor = connection.cursor()
    cursor.execute(*_stored_postgresql_query(keys, column))
    return _answer(keys, cursor)


def _stored_postgresql_query(keys: list[tuple[str, str]], column: str) -> tuple[str, list[str]]:
    # Not "source = %s AND external_id IN (...)": without planner statistics (a freshly loaded table, and the
    # shared server runs with autovacuum off) PostgreSQL reads that through the unique index on source alone and
    # filters every topic of the source, so each chunk read the whole table (an unchanged 100,000-row re-import
    # spent 20 s in these lookups, 100 ms each). The LIMIT keeps the subquery a subquery, so each key is looked up on
    # its own through both columns of the unique index, a plan that needs no statistics. The keys travel as one JSON
    # text, which costs a fifth of the CPU of two text arrays.
    table, value = _quoted(column)
    sql = (
        f"SELECT k.n, t.value FROM json_array_elements(%s::json) WITH ORDINALITY AS k(pair, n) "
        f"CROSS JOIN LATERAL (SELECT {value} AS value FROM {table} "
        f"WHERE source = k.pair->>0 AND external_id = k.pair->>1 LIMIT 1) AS t"
    )
    return sql, [json.dumps(keys)]


def _unchanged(chunk: list[_Record]) -> set[int]:
    """The indexes of the records imported before exactly as they are now (same key, same record hash)."""
    return _same_hash(chunk, stored_by_key([item.key for item in chunk if item.key], "import_hash"))


def _same_hash(chunk: list[_Record], stored: dict[tuple[str, str], str]) -> set[int]:
    _forget_queries()
    return {item.index for item in chunk if item.key and stored.get(item.key) == item.digest}


def _with_unchanged(chunks: Iterator[list[_Record]]) -> Iterator[tuple[list[_Record], set[int]]]:
    """Each chunk with the indexes of its records imported before exactly as they are now (see _unchanged).

    On PostgreSQL the server looks up one chunk's keys while the next chunk is read and hashed (pipeline mode: the
    query is sent, its answer read later), so an unchanged re-import takes about the longer of the two instead of
    their sum (4.3 s instead of 6.1 s for 100,000 rows, median of 5 alternating runs at load 7).
    """
    if connection.vendor != "postgresql":
        for chunk in chunks:
            yield chunk, _unchanged(chunk)
        return
    connection.ensure_connection()
    with connection.connection.pipeline():
        pending = None
        for chunk in chunks:
            if pending is not None:
                yield pending[0], _same_hash(pending[0], _answer(*pending[1:]))
            keys = [item.key for item in chunk if item.key]
            cursor = connection.cursor() if keys else None
            if cursor is not None:
                cursor.execute(*_stored_postgresql_query(keys, "import_hash"))
            pending = (chunk, keys, cursor)
        if pending is not None:
            yield pending[0], _same_hash(pending[0], _answer(*pending[1:]))


def _answer(keys: list[tuple[str, str]], cursor) -> dict[tuple[str, str], Any]:
    if cursor is None:
        return {}
    with cursor:
        return {keys[n - 1]: value for n, value in cursor.fetchall()}


def _key_halves(key: tuple[str, str]) -> tuple[int, int]:
    # Two 64-bit hashes of the key from Python's own string hashing (SipHash with this process's random key; the
    # values only have to agree within one pass), ten times cheaper than a cryptographic digest.
    return hash(key), hash((key[1], key[0], 1))


@dataclass
class _Checked:
    errors: list[RowError]  # the first MAX_REPORTED_ERRORS
    error_count: int
    invalid: bytearray  # a byte per record, in file order: 1 when it is invalid
    unchanged: bytearray  # a byte per record: 1 when it was imported before exactly as it is now

    def to_write(self) -> int:
        return sum(1 for bad, same in zip(self.invalid, self.unchanged, strict=True) if not (bad or same))


def _check(
    *, unit: str, records: Iterator[tuple[int, Any]], categories: dict[str, Category], chunk_rows: int
) -> _Checked:
    """First pass: validate every record, and find the rows that repeat an earlier row's (source, external_id)."""
    errors: list[RowError] = []
    error_count = 0
    invalid, same = bytearray(), bytearray()
    numbers = array("Q")
    # Each valid row's key as a 128-bit hash in two flat arrays (16 bytes a row instead of ~200 for a set of
    # tuples): a million rows cost 16 MB. Two different keys share a hash with a probability of about 2**-128.
    key_high, key_low, key_record = array("q"), array("q"), array("Q")
    for chunk, unchanged in _with_unchanged(_chunks(records, size=chunk_rows)):
        for item in chunk:
            numbers.append(item.number)
            key = item.key
            same.append(item.index in unchanged)
            if item.index not in unchanged:
                try:
                    row = validate_record(number=item.number, record=item.record, categories=categories)
                except ValueError as exc:
                    invalid.append(1)
                    error_count += 1
                    if len(errors) < MAX_REPORTED_ERRORS:
                        errors.append(RowError(item.number, str(exc), unit))
                    continue
                key = (row.source, row.external_id)
            invalid.append(0)
            high, low = _key_halves(key)
            key_high.append(high)
            key_low.append(low)
            key_record.append(item.index)
    for record_index, first_index in _repeated_keys(key_high, key_low, key_record):
        invalid[record_index] = 1
        error_count += 1
        errors.append(RowError(numbers[record_index], f"same source and external_id as {unit} {numbers[first_index]}",
                               unit))
        # Rows arrive in order; the repeats come after them in hash order: keep the first ones of the whole file.
        if len(errors) > 2 * MAX_REPORTED_ERRORS:
            errors = sorted(errors, key=lambda e: e.number)[:MAX_REPORTED_ERRORS]
    return _Checked(sorted(errors, key=lambda e: e.number)[:MAX_REPORTED_ERRORS], error_count, invalid, same)


def _repeated_keys(high: array, low: array, records: array) -> Iterator[tuple[int, int]]:
    """(record, first record with the same key) for every record whose key an earlier record already had."""
    # Sorting the high halves finds the candidates with one transient list; the rare candidates are then grouped by
    # their full 128 bits in file order, so the first of each group is the earliest row.
    ordered = sorted(high)
    candidates = {ordered[i] for i in range(1, len(ordered)) if ordered[i] == ordered[i - 1]}
    del ordered
    if not candidates:
        return
    first: dict[tuple[int, int], int] = {}
    for position, value in enumerate(high):
        if value in candidates:
            key = (value, low[position])
            if key in first:
                yield records[position], first[key]
            else:
                first[key] = records[position]


def import_topics(
    *, path: Path, skip_invalid: bool = False, max_bytes: int | None = None, chunk_rows: int = CHUNK_ROWS
) -> ImportResult:
    """Import the topics in `path`; idempotent on (source, external_id).

    Any invalid row fails the whole import (nothing written) unless `skip_invalid`, which imports the valid
    rows and reports the others. Existing topics get their content refreshed; their review status and an
    editor's category choice are kept, and a row that has not changed since it was last imported is not rewritten.
    """
    max_bytes = settings.IMPORT_MAX_BYTES if max_bytes is None else max_bytes
    first_pass = _read(path, max_bytes=max_bytes)
    # The first record is read before the database is asked anything: a file that is not CSV or JSON at all is
    # reported as such even where the database is not set up yet.
    head = list(itertools.islice(first_pass.records, 1))
    try:
        all_categories = list(Category.objects.all())
    except DatabaseError as exc:
        raise ImportFailed(f"the database is not ready ({str(exc).splitlines()[0]}); run `manage.py migrate`") from None
    if not all_categories:
        raise ImportFailed("no categories exist: run `manage.py migrate` first")
    categories = {c.slug: c for c in all_categories}
    checked = _check(
        unit=first_pass.unit, records=itertools.chain(head, first_pass.records), categories=categories,
        chunk_rows=chunk_rows,
    )
    if checked.error_count and not skip_invalid:
        raise ImportFailed(errors=checked.errors, error_count=checked.error_count)
    result = ImportResult(skipped=checked.errors, skipped_count=checked.error_count)
    invalid = checked.invalid
    if not checked.to_write():
        # Every valid row was imported before exactly as it is now: there is nothing to write, so no second pass.
        result.unchanged = len(invalid) - checked.error_count
        return result
    keywords = KeywordTable(all_categories)  # every category's keywords parsed once for the whole run
    try:
        # One transaction: a failure anywhere in the second pass leaves the database as it was.
        with transaction.atomic():
            second_pass = _read(path, max_bytes=max_bytes)
            for chunk in _chunks(second_pass.records, size=chunk_rows):
                if chunk[-1].index >= len(invalid):
                    raise _changed()
                chunk = [item for item in chunk if not invalid[item.index]]
                unchanged = _unchanged(chunk)
                rows = []
                for item in chunk:
                    if item.index in unchanged:
                        result.unchanged += 1
                        continue
                    try:
                        rows.append(validate_record(number=item.number, record=item.record, categories=categories))
                    except ValueError:
                        raise _changed() from None
                _write(rows=rows, keywords=keywords, result=result)
            if second_pass.digest != first_pass.digest:
                raise _changed()
    except IntegrityError as exc:
        raise ImportFailed(
            f"the database refused the import, so nothing was written ({str(exc).splitlines()[0]}); "
            "if another import of the same topics was running, run this one again"
        ) from None
    except DatabaseError as exc:
        raise ImportFailed(f"database error, nothing was written: {str(exc).splitlines()[0]}") from None
    return result


def _changed() -> ImportFailed:
    return ImportFailed("the file changed while it was being imported; nothing was written")


_CONTENT_FIELDS = ("title", "summary", "url", "canonical_url", "score", "published_at")


def _write(*, rows: list[TopicRow], keywords: KeywordTable, result: ImportResult) -> None:
    """Write one chunk of new or changed rows: create the new topics, refresh the others."""
    ids = list(stored_by_key([(row.source, row.external_id) for row in rows], "id").values())
    existing: dict[tuple[str, str], Topic] = {}
    for start in range(0, len(ids), 500):
        found = Topic.objects.filter(pk__in=ids[start : start + 500]).order_by().only(
            "id", "source", "external_id", "import_hash", "category_id", "category_locked", *_CONTENT_FIELDS
        )
        existing.update(((t.source, t.external_id), t) for t in found)
    to_create: list[Topic] = []
    to_update: list[Topic] = []
    to_rehash: list[Topic] = []
    now = timezone.now()
    for row in rows:
        topic = existing.get((row.source, row.external_id))
        if topic is None:
            to_create.append(Topic(
                title=row.title, summary=row.summary, url=row.url, canonical_url=row.canonical_url, source=row.source,
                external_id=row.external_id, sources=[row.source], score=row.score,
                category=row.category or _categorize(row, keywords),
                category_locked=row.category is not None, status=row.status, published_at=row.published_at,
                import_hash=row.import_hash,
            ))
            continue
        # The record differs from the one last imported, or it names no external_id (its key is known only once it
        # is validated), or the topic predates import hashes: refresh its content. Its review status is the
        # editor's and a locked category is the editor's choice: neither is ever touched.
        before = [getattr(topic, f) for f in _CONTENT_FIELDS] + [topic.category_id, topic.category_locked]
        hashed = topic.import_hash == row.import_hash
        for name in _CONTENT_FIELDS:
            setattr(topic, name, getattr(row, name))
        if not topic.category_locked:
            topic.category = row.category or _categorize(row, keywords)
            topic.category_locked = row.category is not None
        topic.import_hash = row.import_hash
        if [getattr(topic, f) for f in _CONTENT_FIELDS] + [topic.category_id, topic.category_locked] == before:
            # Written differently (CSV instead of JSON, 7 instead of 7.0), or the very record: the same content.
            result.unchanged += 1
            if not hashed:
                to_rehash.append(topic)
        else:
            topic.updated_at = now
            to_update.append(topic)
    Topic.objects.bulk_create(to_create, batch_size=500)
    Topic.objects.bulk_update(
        to_update, [*_CONTENT_FIELDS, "category", "category_locked", "import_hash", "updated_at"], batch_size=500
    )
    Topic.objects.bulk_update(to_rehash, ["import_hash"], batch_size=500)
    result.created += len(to_create)
    result.updated += len(to_update)
    _forget_queries()


def _forget_queries() -> None:
    # With DEBUG on, Django keeps the SQL of its last 9,000 queries: a million-row import would keep gigabytes of
    # bulk INSERTs. Unless a test is capturing them (force_debug_cursor), when they are what it looks at.
    if not connection.force_debug_cursor:
        reset_queries()


def _categorize(row: TopicRow, keywords: KeywordTable) -> Category:
    return keywords.categorize(topic_text(title=row.title, summary=row.summary))
