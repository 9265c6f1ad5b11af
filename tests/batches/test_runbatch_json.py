"""runbatch's command-line contract: with --json every outcome, errors included, is exactly one JSON object."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from batches.models import Batch

pytestmark = pytest.mark.django_db

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACT_KEYS = {"batch", "dry_run", "status", "budget_usd", "spent_usd", "estimated_cost_usd", "items"}


def runbatch_json(*args: str) -> tuple[int, dict, str]:
    """runbatch --json in this process: exit code, the one object it printed, and the error."""
    out = io.StringIO()
    try:
        call_command("runbatch", "--json", *args, stdout=out, stderr=io.StringIO())
    except CommandError as exc:
        code, error = exc.returncode, str(exc)
    else:
        code, error = 0, ""
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    return code, json.loads(lines[0]), error


def manage(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.sqlite3'}"}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def assert_error_object(report: dict, *, mentioning: str) -> None:
    assert CONTRACT_KEYS <= set(report)
    assert report["status"] == "error"
    assert mentioning in report["error"]


# argparse refuses an unknown option or a missing value (and prints the usage); the command itself refuses a value
# that is not a whole number in range, with the same one object.
@pytest.mark.parametrize(("args", "usage"), [(("--size", "abc"), False), (("--no-such-option",), True),
                                             (("--size",), True)])
def test_bad_arguments_on_the_command_line_print_one_error_object(tmp_path, args, usage):
    result = manage(tmp_path, "runbatch", "--dry-run", "--json", *args)

    assert result.returncode == 1
    [line] = result.stdout.strip().splitlines()
    report = json.loads(line)
    assert_error_object(report, mentioning=args[0])
    assert (report["batch"], report["dry_run"], report["items"]) == (None, True, [])
    assert ("usage:" in result.stderr) == usage


def test_a_bad_option_value_prints_one_error_object(categories):
    code, report, error = runbatch_json("--dry-run", "--size", "0")

    assert code == 1
    assert_error_object(report, mentioning="--size must be a whole number from 1 to 100")


def test_a_failed_preflight_prints_one_error_object_and_starts_no_batch(topics_in_every_category, settings):
    settings.ANTHROPIC_API_KEY = ""

    code, report, _ = runbatch_json("--budget", "5")

    assert code == 1
    assert_error_object(report, mentioning="Preflight failed")
    assert (report["batch"], report["budget_usd"], report["spent_usd"]) == (None, "5.000000", "0.000000")
    assert Batch.objects.count() == 0


def test_nothing_to_select_in_a_dry_run_prints_one_error_object(categories):
    code, report, _ = runbatch_json("--dry-run")

    assert code == 1
    assert_error_object(report, mentioning="Nothing to select")


def test_a_batch_that_found_nothing_to_select_prints_one_error_object_naming_it(categories, fake_anthropic):
    code, report, _ = runbatch_json()

    assert code == 1
    batch = Batch.objects.get()
    assert_error_object(report, mentioning="Nothing to select")
    assert (report["batch"], report["items"]) == (batch.pk, [])


def test_an_unexpected_exception_still_prints_one_error_object(categories, monkeypatch):
    from batches.management.commands import runbatch

    def broken(**kwargs):
        raise RuntimeError("the selection exploded")

    monkeypatch.setattr(runbatch, "plan_batch", broken)
    out = io.StringIO()

    with pytest.raises(RuntimeError):
        call_command("runbatch", "--json", "--dry-run", stdout=out)

    [line] = out.getvalue().strip().splitlines()
    assert_error_object(json.loads(line), mentioning="unexpected error: RuntimeError: the selection exploded")


def test_without_json_an_error_prints_no_object(categories):
    out = io.StringIO()

    with pytest.raises(CommandError):
        call_command("runbatch", "--dry-run", stdout=out)

    assert out.getvalue() == ""


def test_help_lists_the_exit_codes(tmp_path):
    result = manage(tmp_path, "runbatch", "--help")

    assert result.returncode == 0
    epilog = result.stdout[result.stdout.index("exit codes:"):]
    for line in ("0  done", "1  error", "3  stopped by the budget", "4  finished with some items failed"):
        assert line in epilog
