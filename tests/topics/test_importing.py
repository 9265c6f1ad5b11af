from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

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


def test_it_reads_an_iso_8601_publication_date(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": "A", "published_at": "2026-11-18T14:05:00+02:00"}])

    run_import(path)

    assert only_topic().published_at == datetime(2026, 11, 18, 12, 5, tzinfo=timezone.utc)


def test_it_reads_a_publication_date_without_a_zone_as_utc(tmp_path, categories):
    run_import(write_json(tmp_path / "t.json", [{"title": "A", "published_at": "2026-11-18T14:05:00"}]))

    assert only_topic().published_at == datetime(2026, 11, 18, 14, 5, tzinfo=timezone.utc)


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
    "same key twice": ({"title": "B", "external_id": "valid-1"}, "same source and external_id as row 1"),
}


@pytest.mark.parametrize("case", list(BAD_JSON_ROWS))
def test_it_rejects_a_bad_json_row_naming_its_number_and_problem(tmp_path, categories, case):
    record, problem = BAD_JSON_ROWS[case]
    path = write_json(tmp_path / "topics.json", [VALID, record])

    error, stderr = failed_import(path)

    assert error.returncode == 1
    assert f"row 2: {problem}" in stderr


@pytest.mark.parametrize("case", list(BAD_JSON_ROWS))
def test_it_writes_nothing_when_a_json_row_is_bad(tmp_path, make_topic, case):
    existing = make_topic("Already here", score=3)
    record, _ = BAD_JSON_ROWS[case]

    failed_import(write_json(tmp_path / "topics.json", [VALID, record]))

    assert list(Topic.objects.values_list("pk", "title", "score")) == [(existing.pk, "Already here", 3)]


BAD_CSV = {
    "more values than columns": ("title,score\nA valid row,1\nB,2,surplus\n", "row 2: more values than header"),
    "unterminated quote": ('title,score\nA valid row,1\n"B,2\n', "row 2: malformed CSV"),
    "stray quote": ('title,score\nA valid row,1\n"B"x,2\n', "row 2: malformed CSV"),
    "negative score": ("title,score\nA valid row,1\nB,-3\n", "row 2: score must be 0 or more"),
    "unknown category": ("title,category\nA valid row,\nB,gardening\n", "row 2: unknown category 'gardening'"),
    "blank title": ("title,score\nA valid row,1\n,2\n", "row 2: title is required"),
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
    "not UTF-8": ("topics.csv", "title\ncaf\xe9\n", "not UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_it_rejects_a_file_it_cannot_read_naming_the_problem(tmp_path, categories, case):
    name, content, message = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1") if case == "not UTF-8" else content.encode("utf-8"))

    error, stderr = failed_import(path)

    assert error.returncode == 1
    assert message in stderr
    assert str(path) in stderr


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

    assert "row 1: score" in stderr and "row 3: unknown category" in stderr
    assert "2 error(s)" in str(error)


def test_it_imports_the_valid_rows_with_skip_invalid(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": "A"}, {"title": "B", "score": -1}, {"title": "C"}])

    out, _ = run_import(path, "--skip-invalid")

    assert sorted(Topic.objects.values_list("title", flat=True)) == ["A", "C"]
    assert "2 created, 0 updated, 0 unchanged, 1 skipped" in out


def test_it_reports_the_skipped_rows_with_their_numbers(tmp_path, categories):
    path = write_json(tmp_path / "t.json", [{"title": "A"}, {"title": "B", "score": -1}, {"title": "C"}])

    _, err = run_import(path, "--skip-invalid")

    assert "skipped row 2: score must be 0 or more" in err


def test_it_refuses_a_broken_csv_even_with_skip_invalid(tmp_path, categories):
    path = tmp_path / "topics.csv"
    path.write_text('title,score\nA,1\n"B,2\nC,3\n', encoding="utf-8")

    error, stderr = failed_import(path, "--skip-invalid")

    assert error.returncode == 1
    assert "row 2: malformed CSV" in stderr
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
