"""runbatch's numeric options: anything but a finite number in range is one clear line and exit 1 (and, with --json,
one JSON object), before any batch, ledger entry or call exists."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from batches.models import Batch, CostLedgerEntry

pytestmark = pytest.mark.django_db

REPO_ROOT = Path(__file__).resolve().parents[2]

BAD_OPTIONS = [
    ("--budget", "1e28"),
    ("--budget", "1e309"),
    ("--budget", "NaN"),
    ("--budget", "sNaN"),
    ("--budget", "Infinity"),
    ("--budget", "-1"),
    ("--budget", "0"),
    ("--budget", "0.0000001"),
    ("--budget", "1000000.01"),
    ("--budget", "forty"),
    ("--size", "0"),
    ("--size", "101"),
    ("--size", "-1"),
    ("--size", "8.5"),
    ("--size", "1e3"),
    ("--size", "abc"),
]
BAD_TIMEOUTS = ["0", "-5", "nan", "inf", "1e309", "604801", "soon"]


@pytest.fixture(autouse=True)
def defaults(settings):
    settings.BATCH_BUDGET_USD = Decimal(40)
    settings.BATCH_SIZE = 8
    settings.MONTHLY_BUDGET_USD = ""


def failed_runbatch(*args: str) -> tuple[CommandError, str]:
    out = io.StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("runbatch", *args, stdout=out, stderr=io.StringIO())
    return excinfo.value, out.getvalue()


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_it_refuses_a_bad_number_naming_the_option_its_range_and_the_value(topics_in_every_category, option, value):
    error, _ = failed_runbatch("--dry-run", option, value)

    assert error.returncode == 1
    assert str(error).startswith(f"{option} must be ")
    assert str(error).endswith(f", got {value!r}")


@pytest.mark.parametrize("value", BAD_TIMEOUTS)
def test_it_refuses_a_bad_timeout(categories, value):
    error, _ = failed_runbatch("--queue", "--wait", "--timeout", value)

    assert error.returncode == 1
    assert str(error) == f"--timeout must be a number of seconds above 0 and at most 604,800, got {value!r}"


@pytest.mark.parametrize(("option", "value"), [("--budget", "1e28"), ("--size", "0"), ("--budget", "NaN")])
def test_it_starts_nothing_when_an_option_is_bad(topics_in_every_category, option, value):
    failed_runbatch(option, value)

    assert (Batch.objects.count(), CostLedgerEntry.objects.count()) == (0, 0)


@pytest.mark.parametrize(("option", "value"), [("--budget", "1e309"), ("--size", "abc"), ("--budget", "-1")])
def test_it_prints_one_json_object_for_a_bad_option_with_json(categories, option, value):
    error, stdout = failed_runbatch("--dry-run", "--json", option, value)

    report = json.loads(stdout)
    assert (report["status"], report["error"], report["batch"]) == ("error", str(error), None)
    assert option in report["error"]


def test_it_rounds_an_accepted_budget_to_six_places(topics_in_every_category):
    out = io.StringIO()
    call_command("runbatch", "--dry-run", "--json", "--budget", "1000000", "--size", " 3 ", stdout=out)

    report = json.loads(out.getvalue())
    assert (report["budget_usd"], len(report["items"])) == ("1000000.000000", 3)


@pytest.mark.parametrize("value", ["1e28", "1e309"])
def test_it_exits_1_with_one_line_from_the_command_line(tmp_path, value):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.sqlite3'}"}

    result = subprocess.run(
        [sys.executable, "manage.py", "runbatch", "--dry-run", "--budget", value],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"CommandError: --budget must be a number of dollars from $0.000001 to $1,000,000, got {value!r}"
    ]
