from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from topics import importing
from topics.categorize import recategorize
from topics.importing import ImportFailed, import_topics
from topics.models import Topic

pytestmark = pytest.mark.django_db

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "topics" / "sample_data" / "sample_topics.json"


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def run_import(path: Path, *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_topics", str(path), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def failed_import(path: Path, *args: str) -> tuple[CommandError, str]:
    err = io.StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("import_topics", str(path), *args, stdout=io.StringIO(), stderr=err)
    return excinfo.value, err.getvalue()


def only_topic() -> Topic:
    (topic,) = Topic.objects.all()
    return topic


# --- reading ---------------------------------------------------------------------------------------


def test_it_imports_a_csv_file(tmp_path, categories):
    path = tmp_path / "topics.csv"
    path.write_text(
        "title,summary,score,status\n"
        "USPS raises parcel rates,Ground Advantage up 7.8%,42.5,approved\n"
        "Klaviyo email flow teardown,,7,new\n",
        encoding="utf-8",
    )

    run_import(path)

    assert sorted(Topic.objects.values_list("title", "score", "status")) == [
        ("Klaviyo email flow teardown", 7.0, "new"),
        ("USPS raises parcel rates", 42.5, "approved"),
    ]


def test_it_imports_a_json_file(tmp_path, categories):
    path = write_json(tmp_path / "topics.json", [
        {"title": "USPS raises parcel rates", "summary": "Ground Advantage up 7.8%", "score": 42.5,
         "status": "approved", "url": "https://example.com/usps", "source": "perplexity", "external_id": "p-1"},
    ])

    run_import(path)

    topic = only_topic()
    assert (topic.title, topic.summary, topic.score, topic.status, topic.url, topic.source, topic.external_id) == (
        "USPS raises parcel rates", "Ground Advantage up 7.8%", 42.5, "approved", "https://example.com/usps",
        "perplexity", "p-1",
    )


def test_it_keeps_line_breaks_inside_a_quoted_csv_field(tmp_path, categories):
    path = tmp_path / "topics.csv"
    path.write_text('title,summary\nUSPS raises parcel rates,"First line\nSecond line"\n', encoding="utf-8")

    run_import(path)

    assert only_topic().summary == "First line\nSecond line"


def test_it_reads_a_csv_file_saved_with_a_byte_order_mark(tmp_path, categories):
    path = tmp_path / "topics.csv"
    path.write_bytes("title,score\nUSPS raises parcel rates,3\n".encode("utf-8-sig"))

    run_import(path)

    assert only_topic().title == "USPS raises parcel rates"


def test_it_reports_what_it_did(tmp_path, categories):
    path = write_json(tmp_path / "topics.json", [{"title": "One"}, {"title": "Two"}])

    out, _ = run_import(path)

    assert "2 created, 0 updated, 0 unchanged, 0 skipped" in out


# --- defaults --------------------------------------------------------------------------------------


def test_it_fills_in_the_defaults_for_a_row_with_only_a_title(tmp_path, categories):
    run_import(write_json(tmp_path / "topics.json", [{"title": "USPS raises parcel rates"}]))

    topic = only_topic()
    assert (topic.source, topic.score, topic.status, topic.published_at) == ("import", 0, "new", None)
    assert topic.external_id


def test_it_categorises_a_row_without_a_category_by_its_keywords(tmp_path, categories):
    run_import(write_json(tmp_path / "topics.json", [{"title": "Our Alibaba supplier sent new samples"}]))

    topic = only_topic()
    assert (topic.category.slug, topic.category_locked) == ("product_sourcing", False)


def test_it_uses_and_locks_the_category_a_row_names(tmp_path, categories):
    path = write_json(tmp_path / "topics.json", [{"title": "Our Alibaba supplier", "category": "ads_marketing"}])

    run_import(path)

    topic = only_topic()
    assert (topic.category.slug, topic.category_locked) == ("ads_marketing", True)


def test_a_category_a_reimported_row_names_is_locked_as_on_the_first_import(tmp_path, categories):
    path = write_json(tmp_path / "topics.json", [{"title": "Our Alibaba supplier", "external_id": "a-1"}])
    run_import(path)
    assert (only_topic().category.slug, only_topic().category_locked) == ("product_sourcing", False)
    write_json(path, [{"title": "Our Alibaba supplier", "external_id": "a-1", "category": "ads_marketing"}])

    run_import(path)
    recategorize(topics=Topic.objects.all())  # the admin's "re-categorise" action leaves a named category alone

    topic = only_topic()
    assert (topic.category.slug, topic.category_locked) == ("ads_marketing", True)


def test_it_reads_an_iso_8601_publication_date(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": "A", "published_at": "2026-11-18T14:05:00+02:00"}])

    run_import(path)

    assert only_topic().published_at == datetime(2026, 11, 18, 12, 5, tzinfo=UTC)


def test_it_reads_a_publication_date_without_a_zone_as_utc(tmp_path, categories):
    run_import(write_json(tmp_path / "t.json", [{"title": "A", "published_at": "2026-11-18T14:05:00"}]))

    assert only_topic().published_at == datetime(2026, 11, 18, 14, 5, tzinfo=UTC)


def test_it_stores_the_canonical_url(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": "A", "url": "https://www.example.com/post/?utm_source=x"}])

    run_import(path)

    assert only_topic().canonical_url == "https://example.com/post"


# --- idempotency -----------------------------------------------------------------------------------


def test_it_creates_no_duplicates_when_a_file_is_imported_twice(tmp_path, categories):
    run_import(SAMPLE)
    first = sorted(Topic.objects.values_list("pk", "source", "external_id"))

    out, _ = run_import(SAMPLE)

    assert sorted(Topic.objects.values_list("pk", "source", "external_id")) == first
    assert f"0 created, 0 updated, {len(first)} unchanged" in out


def test_it_recognises_a_row_without_external_id_by_its_url(tmp_path, categories):
    run_import(write_json(tmp_path / "a.json", [{"title": "Old", "url": "https://example.com/post?utm_source=x"}]))

    run_import(write_json(tmp_path / "b.json", [{"title": "New title", "url": "https://www.example.com/post"}]))

    assert only_topic().title == "New title"


def test_it_recognises_a_row_without_url_or_external_id_by_its_title(tmp_path, categories):
    run_import(write_json(tmp_path / "a.json", [{"title": "USPS raises  parcel rates", "score": 1}]))

    run_import(write_json(tmp_path / "b.json", [{"title": "usps raises parcel rates", "score": 9}]))

    assert only_topic().score == 9


def test_it_keeps_topics_with_the_same_external_id_from_different_sources_apart(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [
        {"title": "A", "source": "reddit", "external_id": "42"},
        {"title": "B", "source": "apify", "external_id": "42"},
    ])

    run_import(path)

    assert Topic.objects.count() == 2


def test_it_refreshes_the_content_of_a_topic_imported_again(tmp_path, categories):
    run_import(write_json(tmp_path / "a.json", [{"title": "A", "external_id": "x1", "score": 5, "summary": "old"}]))
    again = [{"title": "A", "external_id": "x1", "score": 8, "summary": "new"}]

    out, _ = run_import(write_json(tmp_path / "b.json", again))

    topic = only_topic()
    assert (topic.score, topic.summary) == (8, "new")
    assert "0 created, 1 updated" in out


def test_it_keeps_an_editors_review_when_a_topic_is_imported_again(tmp_path, categories):
    run_import(write_json(tmp_path / "a.json", [{"title": "A", "external_id": "x1", "score": 5}]))
    only_topic().review(status=Topic.Status.REJECTED)

    run_import(write_json(tmp_path / "b.json", [{"title": "A", "external_id": "x1", "score": 8, "status": "approved"}]))

    topic = only_topic()
    assert (topic.status, topic.score) == ("rejected", 8)


def test_it_keeps_an_editors_category_when_a_topic_is_imported_again(tmp_path, categories):
    run_import(write_json(tmp_path / "a.json", [{"title": "USPS raises parcel rates", "external_id": "x1"}]))
    only_topic().override_category(categories["pricing_margins"])

    run_import(write_json(tmp_path / "b.json", [{"title": "USPS raises parcel rates again", "external_id": "x1"}]))

    topic = only_topic()
    assert (topic.title, topic.category.slug) == ("USPS raises parcel rates again", "pricing_margins")


def test_it_recategorises_a_topic_whose_new_title_points_elsewhere(tmp_path, categories):
    run_import(write_json(tmp_path / "a.json", [{"title": "USPS raises parcel rates", "external_id": "x1"}]))

    run_import(write_json(tmp_path / "b.json", [{"title": "Klaviyo email flow teardown", "external_id": "x1"}]))

    assert only_topic().category.slug == "customer_retention"


# --- bad input -------------------------------------------------------------------------------------

VALID = {"title": "A valid row that must not be written", "external_id": "valid-1"}

BAD_JSON_ROWS = {
    "negative score": ({"title": "B", "score": -1}, "score must be 0 or more"),
    "score not a number": ({"title": "B", "score": "lots"}, "score must be a number"),
    "score not finite": ({"title": "B", "score": "nan"}, "score must be a finite number"),
    "unknown category": ({"title": "B", "category": "gardening"}, "unknown category 'gardening'"),
    "missing title": ({"summary": "no title here"}, "title is required"),
    "title not text": ({"title": ["B"]}, "title must be text"),
    "title too long": ({"title": "B" * 501}, "title is longer than 500"),
    "title with a NUL": ({"title": "B\x00"}, "title contains a NUL"),
    "not an object": ("just a string", "expected an object"),
    "unknown status": ({"title": "B", "status": "published"}, "status must be 'new' or 'approved'"),
    "rejected status": ({"title": "B", "status": "rejected"}, "status must be 'new' or 'approved'"),
    "bad date": ({"title": "B", "published_at": "next tuesday"}, "published_at is not an ISO 8601"),
    "bad url": ({"title": "B", "url": "not a url"}, "url is not a valid http(s) URL"),
    "same key twice": ({"title": "B", "external_id": "valid-1"}, "same source and external_id as item 1"),
    "date in year 10000 once in UTC": (
        {"title": "B", "published_at": "9999-12-31T23:59:59-12:00"}, "published_at must be between 1970 and 2100"
    ),
    "date before year 1 once in UTC": (
        {"title": "B", "published_at": "0001-01-01T00:00:00+14:00"}, "published_at must be between 1970 and 2100"
    ),
    "date in 2101 once in UTC": (
        {"title": "B", "published_at": "2100-12-31T20:00:00-05:00"}, "published_at must be between 1970 and 2100"
    ),
    "date before 1970": ({"title": "B", "published_at": "1969-12-31T23:59:59Z"}, "published_at must be between"),
    "infinite score": ({"title": "B", "score": float("inf")}, "score must be a finite number"),
    "url with port 99999": ({"title": "B", "url": "https://example.com:99999/post"}, "url is not a valid http(s)"),
    "url that cannot be parsed": ({"title": "B", "url": "http://[::1/post"}, "url is not a valid http(s) URL"),
    "summary too long": ({"title": "B", "summary": "b" * 10_001}, "summary is longer than 10,000 characters"),
    "title with a lone surrogate": ({"title": "B \ud800"}, "title contains an invalid character"),
    # The key is looked up before validation (an unchanged row is not validated again): a key no database can
    # store must still become a row error, not a database error.
    "external_id with a NUL": ({"title": "B", "external_id": "k\x00"}, "external_id contains a NUL"),
    "source with a NUL": ({"title": "B", "source": "s\x00", "external_id": "k"}, "source contains a NUL"),
    "external_id with a lone surrogate": (
        {"title": "B", "external_id": "k \ud800"}, "external_id contains an invalid character"
    ),
    "source with a lone surrogate": (
        {"title": "B", "source": "s \ud800", "external_id": "k"}, "source contains an invalid character"
    ),
}


@pytest.mark.parametrize("case", list(BAD_JSON_ROWS))
def test_it_rejects_a_bad_json_row_naming_its_number_and_problem(tmp_path, categories, case):
    record, problem = BAD_JSON_ROWS[case]
    path = write_json(tmp_path / "topics.json", [VALID, record])

    error, stderr = failed_import(path)

    assert error.returncode == 1
    assert f"item 2: {problem}" in stderr


@pytest.mark.parametrize("case", list(BAD_JSON_ROWS))
def test_it_writes_nothing_when_a_json_row_is_bad(tmp_path, make_topic, case):
    existing = make_topic("Already here", score=3)
    record, _ = BAD_JSON_ROWS[case]

    failed_import(write_json(tmp_path / "topics.json", [VALID, record]))

    assert list(Topic.objects.values_list("pk", "title", "score")) == [(existing.pk, "Already here", 3)]


BAD_CSV = {
    "more values than columns": ("title,score\nA valid row,1\nB,2,surplus\n", "row 3: more values than header"),
    "unterminated quote": ('title,score\nA valid row,1\n"B,2\n', "row 3: malformed CSV"),
    "stray quote": ('title,score\nA valid row,1\n"B"x,2\n', "row 3: malformed CSV"),
    "negative score": ("title,score\nA valid row,1\nB,-3\n", "row 3: score must be 0 or more"),
    "unknown category": ("title,category\nA valid row,\nB,gardening\n", "row 3: unknown category 'gardening'"),
    "blank title": ("title,score\nA valid row,1\n,2\n", "row 3: title is required"),
}


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_it_rejects_a_bad_csv_row_naming_its_number_and_problem(tmp_path, categories, case):
    content, message = BAD_CSV[case]
    path = tmp_path / "topics.csv"
    path.write_text(content, encoding="utf-8")

    error, stderr = failed_import(path)

    assert error.returncode == 1
    assert message in stderr
    assert Topic.objects.count() == 0


BAD_FILES = {
    "invalid JSON": ("topics.json", '[{"title": "A"},\n {"title": }]', "invalid JSON at line 2"),
    "JSON that is not a list": ("topics.json", '{"title": "A"}', "expected a JSON list of objects"),
    "CSV without a title column": ("topics.csv", "name,score\nA,1\n", "must name a 'title' column"),
    "unknown file type": ("topics.txt", "title\nA\n", "unknown file type .txt"),
    "JSON nested 200,000 deep": ("topics.json", "[" * 200_000 + "]" * 200_000, "item 1: nested too deeply"),
    "a JSON field nested 200,000 deep": (
        "topics.json", '[{"title": "A"}, {"title": ' + "[" * 200_000 + "]" * 200_000 + "}]", "item 2: nested too deeply"
    ),
    "JSON object nested 200,000 deep": ("topics.json", '{"a":' * 200_000, "expected a JSON list of objects"),
    "text after the JSON list": ("topics.json", '[{"title": "A"}]\n[', "invalid JSON at line 2, column 1: Extra data"),
    "JSON list never closed": ("topics.json", '[{"title": "A"}', "the list is not closed"),
    "empty JSON file": ("topics.json", "", "the file is empty"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_it_rejects_a_file_it_cannot_read_naming_the_problem(tmp_path, categories, case):
    name, content, message = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8"))

    error, stderr = failed_import(path)

    assert error.returncode == 1
    assert message in stderr
    assert str(path) in stderr


def test_a_byte_that_is_not_utf8_is_reported_with_its_row(tmp_path, categories):
    # A CSV saved by a spreadsheet in Windows-1252: the file is decoded in blocks far larger than a row, so the
    # error must still say which row holds the byte, not where the block began.
    rows = "".join(f"Topic number {n},summary {n}\n" for n in range(2, 60))
    path = tmp_path / "topics.csv"
    path.write_bytes(b"title,summary\n" + rows.encode() + "Caf\xe9 au lait,x\n".encode("cp1252"))

    error, stderr = failed_import(path)

    assert error.returncode == 1
    assert "row 60: title is not UTF-8 text" in stderr
    assert Topic.objects.count() == 0


def test_skip_invalid_skips_the_rows_that_are_not_utf8_and_imports_the_rest(tmp_path, categories):
    path = tmp_path / "topics.json"
    path.write_bytes(b'[{"title": "Good row"}, {"title": "Caf\xe9 row"}, {"title": "Another good row"}]')

    _, stderr = run_import(path, "--skip-invalid")

    assert "item 2: title is not UTF-8 text" in stderr
    assert sorted(Topic.objects.values_list("title", flat=True)) == ["Another good row", "Good row"]


def test_skip_invalid_skips_a_csv_row_with_a_field_larger_than_the_csv_modules_default_limit(tmp_path, categories):
    path = tmp_path / "topics.csv"
    path.write_text("title,summary\nGood row,fine\nHuge row," + "x" * 200_000 + "\nAnother good row,fine\n")

    _, stderr = run_import(path, "--skip-invalid")

    assert sorted(Topic.objects.values_list("title", flat=True)) == ["Another good row", "Good row"]
    assert "row 3: summary is longer than 10,000 characters" in stderr


@pytest.mark.parametrize("url", [
    "http://example.com/" + "a" * 981,  # 1,000 characters; its canonical form (https) one more
    "https://example.com/?q=" + "\u00e9" * 300,  # 323 characters; percent-encoded, its canonical form 1,823
])
def test_a_valid_url_never_stores_a_canonical_url_longer_than_its_column(tmp_path, categories, url):
    records = [{"title": "ok", "external_id": "ok"}, {"title": "long url", "url": url}]
    path = write_json(tmp_path / "topics.json", records)

    import_topics(path=path)

    topic = Topic.objects.get(title="long url")
    assert topic.url == url
    assert len(topic.canonical_url) == Topic._meta.get_field("canonical_url").max_length


def test_it_rejects_a_missing_file(tmp_path, categories):
    error, stderr = failed_import(tmp_path / "nowhere.json")

    assert error.returncode == 1
    assert "no such file" in stderr


def test_it_rejects_a_path_that_is_a_directory(tmp_path, categories):
    folder = tmp_path / "topics.csv"
    folder.mkdir()

    error, stderr = failed_import(folder)

    assert error.returncode == 1
    assert "cannot read the file" in stderr


def test_it_reports_every_bad_row_not_just_the_first(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": "A", "score": -1}, VALID, {"title": "C", "category": "x"}])

    error, stderr = failed_import(path)

    assert "item 1: score" in stderr and "item 3: unknown category" in stderr
    assert "2 error(s)" in str(error)


def test_it_imports_the_valid_rows_with_skip_invalid(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": "A"}, {"title": "B", "score": -1}, {"title": "C"}])

    out, _ = run_import(path, "--skip-invalid")

    assert sorted(Topic.objects.values_list("title", flat=True)) == ["A", "C"]
    assert "2 created, 0 updated, 0 unchanged, 1 skipped" in out


def test_it_reports_the_skipped_rows_with_their_numbers(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": "A"}, {"title": "B", "score": -1}, {"title": "C"}])

    _, err = run_import(path, "--skip-invalid")

    assert "skipped item 2: score must be 0 or more" in err


def test_it_refuses_a_broken_csv_even_with_skip_invalid(tmp_path, categories):
    path = tmp_path / "topics.csv"
    path.write_text('title,score\nA,1\n"B,2\nC,3\n', encoding="utf-8")

    error, stderr = failed_import(path, "--skip-invalid")

    assert error.returncode == 1
    assert "row 3: malformed CSV" in stderr
    assert Topic.objects.count() == 0


def test_it_exits_with_status_1_naming_the_problem(tmp_path):
    path = tmp_path / "topics.json"
    path.write_text("[{", encoding="utf-8")
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.sqlite3'}"}

    result = subprocess.run(
        [sys.executable, "manage.py", "import_topics", str(path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 1
    assert "invalid JSON at line 1" in result.stderr


# --- row numbers -----------------------------------------------------------------------------------


def test_it_numbers_csv_rows_as_a_spreadsheet_does_with_the_header_as_row_1(tmp_path, categories):
    path = tmp_path / "topics.csv"
    path.write_text("title,score\nB,-1\n", encoding="utf-8")

    _, stderr = failed_import(path)

    assert f"{path}: row 2: score must be 0 or more" in stderr


def test_it_counts_a_quoted_field_with_line_breaks_as_one_row(tmp_path, categories):
    path = tmp_path / "topics.csv"
    path.write_text('title,summary,score\nA,"line one\nline two\nline three",1\nB,,-1\n', encoding="utf-8")

    _, stderr = failed_import(path)

    assert "row 3: score must be 0 or more" in stderr


def test_it_counts_a_blank_line_as_a_row(tmp_path, categories):
    path = tmp_path / "topics.csv"
    path.write_text("title,score\nA,1\n\nB,-1\n", encoding="utf-8")

    _, stderr = failed_import(path)

    assert "row 4: score must be 0 or more" in stderr


def test_it_numbers_json_items_from_1(tmp_path, categories):
    _, stderr = failed_import(write_json(tmp_path / "t.json", [{"title": "B", "score": -1}]))

    assert "item 1: score must be 0 or more" in stderr


def test_it_lists_the_first_50_errors_and_counts_the_rest(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": f"B{n}", "score": -1} for n in range(60)])

    error, stderr = failed_import(path)

    assert "60 error(s)" in str(error)
    assert stderr.count("score must be 0 or more") == 50
    assert "item 50: score" in stderr and "item 51: score" not in stderr
    assert "… and 10 more errors not listed." in stderr


# --- dates, numbers and sizes that must not reach the database ----------------------------------------


@pytest.mark.parametrize("value", ["1970-01-01T00:00:00Z", "1970-01-01T05:00:00+05:00", "2100-12-31T23:59:59Z"])
def test_it_accepts_publication_dates_at_the_edges_of_the_range(tmp_path, categories, value):
    run_import(write_json(tmp_path / "t.json", [{"title": "A", "published_at": value}]))

    assert only_topic().published_at == datetime.fromisoformat(value).astimezone(UTC)


def test_it_rejects_a_5000_digit_json_score_in_one_short_line(tmp_path, categories):
    path = tmp_path / "t.json"
    path.write_text('[{"title": "A", "score": ' + "9" * 5000 + "}]", encoding="utf-8")

    _, stderr = failed_import(path)

    (line,) = [line for line in stderr.splitlines() if "score" in line]
    assert "item 1: score must be a finite number" in line
    assert len(line) < len(str(path)) + 150


def test_it_rejects_a_5000_digit_csv_score(tmp_path, categories):
    path = tmp_path / "t.csv"
    path.write_text("title,score\nA," + "9" * 5000 + "\n", encoding="utf-8")

    _, stderr = failed_import(path)

    assert "row 2: score must be a finite number" in stderr


def test_it_stores_a_title_of_exactly_500_characters_and_a_summary_of_10000(tmp_path, categories):
    run_import(write_json(tmp_path / "t.json", [{"title": "t" * 500, "summary": "s" * 10_000}]))

    topic = only_topic()
    assert (len(topic.title), len(topic.summary)) == (500, 10_000)


# --- what is read, and how -------------------------------------------------------------------------


def test_it_refuses_a_device_without_reading_it(tmp_path, categories):
    path = tmp_path / "zero.json"
    path.symlink_to("/dev/zero")

    error, stderr = failed_import(path)

    assert error.returncode == 1
    assert "it is a character device, not a regular file" in stderr


def test_it_refuses_a_fifo_without_waiting_for_a_writer(tmp_path, categories):
    path = tmp_path / "topics.csv"
    os.mkfifo(path)

    _, stderr = failed_import(path)

    assert "it is a FIFO (named pipe), not a regular file" in stderr


def test_it_refuses_a_file_over_the_size_limit_before_reading_it(tmp_path, categories, settings):
    settings.IMPORT_MAX_BYTES = 100
    path = write_json(tmp_path / "t.json", [{"title": "A long enough title to pass the limit", "n": "x" * 100}])

    error, stderr = failed_import(path)

    assert error.returncode == 1
    assert f"the file is {path.stat().st_size:,} bytes, over the import limit of 100 bytes (IMPORT_MAX_BYTES)" in stderr
    assert Topic.objects.count() == 0


def test_it_reads_json_in_small_pieces_exactly_as_in_one(tmp_path, categories, monkeypatch):
    monkeypatch.setattr("topics.importing._JsonList.READ_CHARS", 7)
    records = [
        {"title": f"Story number {n}", "score": 123456789 + n, "summary": "é ü \\" + '"quoted"', "external_id": n}
        for n in range(20)
    ]

    run_import(write_json(tmp_path / "t.json", records))

    stored = {t.external_id: (t.title, t.score, t.summary) for t in Topic.objects.all()}
    assert stored == {str(r["external_id"]): (r["title"], r["score"], r["summary"]) for r in records}


def test_it_names_the_line_of_a_json_error_read_in_small_pieces(tmp_path, categories, monkeypatch):
    monkeypatch.setattr("topics.importing._JsonList.READ_CHARS", 5)
    path = tmp_path / "t.json"
    path.write_text('[\n{"title": "A"},\n{"title": "B"},\n{"title": tru}\n]', encoding="utf-8")

    _, stderr = failed_import(path)

    assert "invalid JSON at line 4, column 11" in stderr


def test_it_refuses_a_json_item_larger_than_the_item_limit(tmp_path, categories, monkeypatch):
    monkeypatch.setattr("topics.importing.MAX_ITEM_CHARS", 1000)
    monkeypatch.setattr("topics.importing._JsonList.READ_CHARS", 100)

    _, stderr = failed_import(write_json(tmp_path / "t.json", [{"title": "A"}, {"title": "B", "x": "y" * 5000}]))

    assert "item 2: larger than 1,000 characters" in stderr


# --- streaming in chunks ---------------------------------------------------------------------------


def test_it_parses_each_categorys_keywords_once_however_many_rows_it_categorizes(tmp_path, categories, keyword_reads):
    path = write_json(tmp_path / "t.json", [{"title": f"USPS parcel rates, part {n}"} for n in range(5)])

    result = import_topics(path=path, chunk_rows=2)

    assert result.created == 5
    assert sorted(keyword_reads) == sorted(categories)  # once each, not once a row


def test_it_writes_every_row_when_the_file_spans_many_chunks(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": f"Story {n}", "external_id": f"s-{n}"} for n in range(7)])

    result = import_topics(path=path, chunk_rows=2)

    assert (result.created, Topic.objects.count()) == (7, 7)


def test_it_finds_a_repeated_key_in_another_chunk(tmp_path, categories):
    records = [{"title": f"Story {n}", "external_id": f"s-{n}"} for n in range(5)] + [
        {"title": "Story again", "external_id": "s-0"}
    ]

    with pytest.raises(ImportFailed) as excinfo:
        import_topics(path=write_json(tmp_path / "t.json", records), chunk_rows=2)

    assert [str(e) for e in excinfo.value.errors] == ["item 6: same source and external_id as item 1"]
    assert Topic.objects.count() == 0


def test_it_imports_the_first_of_two_rows_with_the_same_key_with_skip_invalid(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": "First", "external_id": "k"}, {"title": "Second", "external_id": "k"}])

    _, err = run_import(path, "--skip-invalid")

    assert only_topic().title == "First"
    assert "skipped item 2: same source and external_id as item 1" in err


def test_it_writes_nothing_when_the_file_changes_between_checking_and_writing(tmp_path, categories, monkeypatch):
    path = write_json(tmp_path / "t.json", [{"title": f"Story {n}", "external_id": f"s-{n}"} for n in range(6)])
    check = importing._check

    def check_then_change_the_file(**kwargs):
        checked = check(**kwargs)
        write_json(path, [{"title": f"Story {n}", "external_id": f"s-{n}"} for n in range(5)] + [{"title": ""}])
        return checked

    monkeypatch.setattr(importing, "_check", check_then_change_the_file)

    with pytest.raises(ImportFailed) as excinfo:
        import_topics(path=path, chunk_rows=1)

    assert "the file changed while it was being imported" in str(excinfo.value)
    assert Topic.objects.count() == 0


# --- unchanged rows are recognised by their hash ------------------------------------------------------


def test_it_writes_nothing_when_an_unchanged_file_is_imported_again(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": f"Story {n}", "url": f"https://example.com/{n}"} for n in range(5)])
    run_import(path)

    with CaptureQueriesContext(connection) as queries:
        out, _ = run_import(path)

    assert "0 created, 0 updated, 5 unchanged" in out
    assert not [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]


def test_it_keeps_an_editors_edit_when_an_unchanged_file_is_imported_again(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": "USPS raises parcel rates", "external_id": "x1"}])
    run_import(path)
    Topic.objects.update(title="USPS raises parcel rates by 7.8%")

    run_import(path)

    assert only_topic().title == "USPS raises parcel rates by 7.8%"


def test_it_refreshes_a_row_whose_content_changed_since_the_last_import(tmp_path, categories):
    run_import(write_json(tmp_path / "a.json", [{"title": "A", "external_id": "x1", "published_at": "2026-01-02"}]))

    run_import(write_json(tmp_path / "b.json", [{"title": "A", "external_id": "x1", "published_at": "2026-01-03"}]))

    assert only_topic().published_at == datetime(2026, 1, 3, tzinfo=UTC)


def test_it_records_a_hash_on_a_topic_imported_before_hashes_without_changing_it(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": "A", "external_id": "x1", "score": 5}])
    run_import(path)
    Topic.objects.update(import_hash="", updated_at=datetime(2026, 1, 1, tzinfo=UTC))

    out, _ = run_import(path)

    topic = only_topic()
    assert "0 updated, 1 unchanged" in out
    assert topic.import_hash and topic.updated_at == datetime(2026, 1, 1, tzinfo=UTC)


def test_it_counts_the_same_content_written_differently_as_unchanged(tmp_path, categories):
    run_import(write_json(tmp_path / "a.json", [{"title": "A", "external_id": "x1", "score": 7}]))
    path = tmp_path / "b.csv"
    path.write_text("title,external_id,score\nA,x1,7.0\n", encoding="utf-8")

    out, _ = run_import(path)

    assert "0 created, 0 updated, 1 unchanged" in out


def test_it_keeps_an_editors_locked_category_when_a_changed_row_is_imported(tmp_path, categories):
    run_import(write_json(tmp_path / "a.json", [{"title": "A", "external_id": "x1", "category": "ads_marketing"}]))
    only_topic().override_category(categories["pricing_margins"])

    run_import(write_json(tmp_path / "b.json", [{"title": "B", "external_id": "x1", "category": "ads_marketing"}]))

    topic = only_topic()
    assert (topic.title, topic.category.slug) == ("B", "pricing_margins")


def test_it_reads_an_unchanged_file_only_once(tmp_path, categories, monkeypatch):
    path = write_json(tmp_path / "t.json", [{"title": f"Story {n}", "external_id": f"s-{n}"} for n in range(3)])
    run_import(path)
    reads = []
    read = importing._read
    monkeypatch.setattr(importing, "_read", lambda *args, **kwargs: reads.append(args) or read(*args, **kwargs))

    out, _ = run_import(path)

    assert "0 created, 0 updated, 3 unchanged" in out
    assert len(reads) == 1


def test_it_writes_the_changed_row_of_a_file_that_is_otherwise_unchanged(tmp_path, categories):
    records = [{"title": f"Story {n}", "external_id": f"s-{n}"} for n in range(3)]
    run_import(write_json(tmp_path / "a.json", records))
    records[1]["title"] = "Story one, corrected"

    out, _ = run_import(write_json(tmp_path / "b.json", records))

    assert "0 created, 1 updated, 2 unchanged" in out
    assert Topic.objects.get(external_id="s-1").title == "Story one, corrected"


def test_it_tells_unchanged_changed_and_new_rows_apart_across_many_chunks(tmp_path, categories):
    records = [{"title": f"Story {n}", "external_id": f"s-{n}"} for n in range(7)]
    import_topics(path=write_json(tmp_path / "a.json", records), chunk_rows=2)
    records[3]["title"] = "Story three, corrected"
    records += [{"title": "New story", "external_id": "s-7"}, {"title": "Another", "external_id": "s-8"}]

    result = import_topics(path=write_json(tmp_path / "b.json", records), chunk_rows=2)

    assert (result.created, result.updated, result.unchanged) == (2, 1, 6)
    assert Topic.objects.get(external_id="s-3").title == "Story three, corrected"


def test_it_recognises_an_unchanged_row_whose_key_is_not_plain_ascii(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [
        {"title": "Café story", "source": "Le Monde — économie", "external_id": "café-😀-1"},
        {"title": "Quoted", "source": 'a "quoted", \\ source', "external_id": "tab\there"},
    ])
    import_topics(path=path)

    result = import_topics(path=path)

    assert (result.created, result.updated, result.unchanged) == (0, 0, 2)


def test_it_reports_a_broken_row_met_while_earlier_rows_are_being_looked_up(tmp_path, categories):
    rows = "".join(f"Story {n},s-{n}\n" for n in range(6))
    path = tmp_path / "t.csv"
    path.write_text("title,external_id\n" + rows, encoding="utf-8")
    import_topics(path=path, chunk_rows=2)
    path.write_text("title,external_id\n" + rows + '"Broken,s-9\n', encoding="utf-8")

    with pytest.raises(ImportFailed) as excinfo:
        import_topics(path=path, chunk_rows=2)

    assert "row 8: malformed CSV" in str(excinfo.value)
    assert Topic.objects.count() == 6  # and the connection still answers


def test_it_hashes_records_that_import_alike_alike_and_others_apart():
    row = {"title": "A", "summary": "b", "score": 7}

    assert importing.record_hash(row) == importing.record_hash({"title": "A", "summary": "b", "score": "7", "url": ""})
    assert importing.record_hash(row) != importing.record_hash({"title": "A", "summary": "b", "score": 8})
    assert importing.record_hash({"title": "A", "summary": "b"}) != importing.record_hash({"title": "A\x00b"})
    assert importing.record_hash({"title": ["A"]}) == ""


def plan(sql: str) -> str:
    """How the database runs `sql`: PostgreSQL runs it (EXPLAIN ANALYZE, so rows read and thrown away show)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + sql)
            return "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("EXPLAIN QUERY PLAN " + sql)
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


def test_it_looks_up_each_stored_row_through_both_columns_of_its_key_without_planner_statistics(tmp_path, categories):
    # A freshly loaded table has no planner statistics (the development server runs with autovacuum off): the
    # lookup of "is this row imported already?" must still find each key through the whole unique index, never
    # read every topic of the source and filter them (which made a 100,000-row re-import take 36 s).
    path = tmp_path / "t.csv"
    path.write_text("title,external_id\n" + "".join(f"Story {n},s-{n}\n" for n in range(3000)), encoding="utf-8")
    import_topics(path=path)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW autovacuum")
            autovacuum = cursor.fetchone()[0] == "on"  # then statistics may appear at any time: the plan must hold
            cursor.execute("SELECT count(*) FROM pg_stats WHERE tablename = 'topics_topic'")
        else:
            autovacuum = False
            cursor.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
        assert autovacuum or cursor.fetchone() == (0,)

    with CaptureQueriesContext(connection) as queries:
        result = import_topics(path=path)

    assert result.unchanged == 3000
    lookups = [q["sql"] for q in queries if "external_id" in q["sql"]]
    assert lookups
    for sql in lookups:
        shown = plan(sql)
        if connection.vendor == "postgresql":
            assert "Seq Scan on topics_topic" not in shown and "Rows Removed" not in shown, shown
            assert "topic_unique_source_external_id" in shown, shown
            assert any("Index Cond" in line and "external_id" in line for line in shown.splitlines()), shown
        else:
            assert "(source=? AND external_id=?)" in shown, shown
