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

from batches.models import CostLedgerEntry
from topics.models import Category
from tests.support import record_ledger_entry

pytestmark = pytest.mark.django_db

REPO_ROOT = Path(__file__).resolve().parents[2]

# Opaque values with no word in them, so any five characters of one showing up in the output is a leak.
ANTHROPIC_KEY = "Qz8XvK2pLm9RwT4nB7yH6jD3fG5sA1cE"
OPTIONAL_SECRETS = {
    "REDDIT_CLIENT_ID": "Jh7Kq2Wm9Xz4Pv6Lb3Nc",
    "REDDIT_CLIENT_SECRET": "Yt5Ru8Ie1Ow3Pq6As9Df2Gh",
    "PERPLEXITY_API_KEY": "Mk4Nj7Bh0Vg3Cf6Xd9Sz2Aq5",
    "TUBELAB_API_KEY": "Zx8Cv5Bn2Mq7Wf4Er1Ty6Ui",
    "APIFY_TOKEN": "Lk3Jh6Gf9Ds2Ap5Oi8Uy1Tr4",
}
# check name -> (the settings it needs, a word from what it enables)
OPTIONAL_CHECKS = {
    "REDDIT_CLIENT_ID": (("REDDIT_CLIENT_ID", "REDDIT_CLIENT_SECRET"), "Reddit"),
    "PERPLEXITY_API_KEY": (("PERPLEXITY_API_KEY",), "Perplexity"),
    "TUBELAB_API_KEY": (("TUBELAB_API_KEY",), "YouTube"),
    "APIFY_TOKEN": (("APIFY_TOKEN",), "Apify"),
}


@pytest.fixture(autouse=True)
def clean_settings(settings, categories):
    """Nothing configured but a broker that needs no server: each test sets what it is about."""
    settings.ANTHROPIC_API_KEY = ""
    for name in OPTIONAL_SECRETS:
        setattr(settings, name, "")
    settings.ANTHROPIC_MODEL = "claude-sonnet-4-6"
    settings.BATCH_BUDGET_USD = "40"
    settings.MONTHLY_BUDGET_USD = ""
    settings.CELERY_BROKER_URL = "memory://"
    return settings


class Result:
    def __init__(self, stdout: str, stderr: str, error: CommandError | None):
        self.stdout, self.stderr, self.error = stdout, stderr, error

    @property
    def exit_code(self) -> int:
        return self.error.returncode if self.error else 0

    @property
    def output(self) -> str:
        return self.stdout + self.stderr + (str(self.error) if self.error else "")

    @property
    def report(self) -> dict:
        return json.loads(self.stdout)

    def check(self, name: str) -> dict:
        (found,) = [c for c in self.report["checks"] if c["name"] == name]
        return found


def preflight(*args: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("preflight", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return Result(out.getvalue(), err.getvalue(), exc)
    return Result(out.getvalue(), err.getvalue(), None)


def assert_not_leaked(secret: str, text: str, *, shown: int = 4) -> None:
    windows = {secret[i : i + shown + 1] for i in range(len(secret) - shown)}
    leaked = sorted(w for w in windows if w in text)
    assert not leaked, f"output shows more than {shown} characters of a secret: {leaked}"


# --- ANTHROPIC_API_KEY -----------------------------------------------------------------------------


def test_it_reports_an_error_without_an_anthropic_key():
    result = preflight("--json")

    assert result.check("ANTHROPIC_API_KEY")["status"] == "error"


def test_it_exits_1_without_an_anthropic_key():
    result = preflight("--json")

    assert (result.exit_code, result.report["ready"]) == (1, False)


def test_it_is_ready_with_an_anthropic_key_and_no_optional_key(settings):
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY

    result = preflight("--json")

    assert (result.exit_code, result.report["ready"], result.check("ANTHROPIC_API_KEY")["status"]) == (0, True, "ok")


@pytest.mark.parametrize("mode", [[], ["--json"]], ids=["text", "json"])
def test_it_shows_at_most_the_last_four_characters_of_the_anthropic_key(settings, mode):
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY

    result = preflight(*mode)

    assert ANTHROPIC_KEY[-4:] in result.stdout
    assert_not_leaked(ANTHROPIC_KEY, result.output)


def test_it_shows_nothing_of_a_short_key(settings):
    settings.ANTHROPIC_API_KEY = "Qx7Zk9Wv"

    result = preflight()

    assert_not_leaked("Qx7Zk9Wv", result.output, shown=3)


# --- optional keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIONAL_CHECKS))
def test_it_warns_about_a_missing_optional_key_naming_what_it_enables(name):
    variables, enables = OPTIONAL_CHECKS[name]

    check = preflight("--json").check(name)

    assert check["status"] == "warning"
    assert all(v in check["detail"] for v in variables)
    assert enables in check["detail"]


@pytest.mark.parametrize("name", list(OPTIONAL_CHECKS))
def test_it_passes_an_optional_key_that_is_set(settings, name):
    for variable in OPTIONAL_CHECKS[name][0]:
        setattr(settings, variable, OPTIONAL_SECRETS[variable])

    assert preflight("--json").check(name)["status"] == "ok"


@pytest.mark.parametrize("mode", [[], ["--json"]], ids=["text", "json"])
def test_it_never_prints_an_optional_secret(settings, mode):
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY
    for variable, value in OPTIONAL_SECRETS.items():
        setattr(settings, variable, value)

    result = preflight(*mode)

    for secret in [ANTHROPIC_KEY, *OPTIONAL_SECRETS.values()]:
        assert_not_leaked(secret, result.output)


def test_it_names_the_missing_half_of_the_reddit_credentials(settings):
    settings.REDDIT_CLIENT_ID = OPTIONAL_SECRETS["REDDIT_CLIENT_ID"]

    check = preflight("--json").check("REDDIT_CLIENT_ID")

    assert check["status"] == "warning"
    assert "REDDIT_CLIENT_SECRET not set" in check["detail"]


def test_it_stays_ready_when_only_optional_keys_are_missing(settings):
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY

    result = preflight("--json")

    assert result.report["ready"] is True
    assert {c["status"] for c in result.report["checks"] if c["name"] in OPTIONAL_CHECKS} == {"warning"}


# --- output ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", ANTHROPIC_KEY], ids=["not-ready", "ready"])
def test_it_prints_exactly_one_json_object_with_ready_and_checks(settings, key):
    settings.ANTHROPIC_API_KEY = key

    result = preflight("--json")

    assert len(result.stdout.strip().splitlines()) == 1
    report = result.report
    assert set(report) == {"ready", "checks"}
    assert isinstance(report["ready"], bool)
    for check in report["checks"]:
        assert set(check) == {"name", "status", "detail"}
        assert check["status"] in {"ok", "warning", "error"}
        assert isinstance(check["name"], str) and isinstance(check["detail"], str) and check["detail"]


def test_it_reports_every_check_the_contract_lists(settings):
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY

    names = {c["name"] for c in preflight("--json").report["checks"]}

    assert names == {"ANTHROPIC_API_KEY", *OPTIONAL_CHECKS, "database", "categories", "price", "budget", "broker"}


def test_it_prints_one_line_per_check_and_a_verdict_in_text_mode():
    result = preflight()

    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(preflight("--json").report["checks"]) + 1
    assert any(line.startswith("[FAIL] ANTHROPIC_API_KEY") for line in lines)
    assert lines[-1].startswith("Not ready")


# --- price, budget, categories, database, broker ---------------------------------------------------


def test_it_fails_when_the_configured_model_has_no_price(settings):
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY
    settings.ANTHROPIC_MODEL = "claude-unknown-1"

    result = preflight("--json")

    assert result.exit_code == 1
    assert result.check("price")["status"] == "error"
    assert "claude-unknown-1" in result.check("price")["detail"]


def test_it_shows_the_price_of_the_configured_model(settings):
    settings.ANTHROPIC_MODEL = "claude-haiku-4-5"

    check = preflight("--json").check("price")

    assert check["status"] == "ok"
    assert "claude-haiku-4-5" in check["detail"]


def spend_this_month(amount: str) -> None:
    record_ledger_entry(
        idempotency_key=f"test-spend-{amount}", status=CostLedgerEntry.Status.SETTLED,
        reserved_usd=Decimal(amount), amount_usd=Decimal(amount), model="claude-sonnet-4-6",
    )


def test_it_fails_when_the_monthly_cap_is_used_up(settings):
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY
    settings.MONTHLY_BUDGET_USD = "10"
    spend_this_month("10")

    result = preflight("--json")

    assert result.exit_code == 1
    assert result.check("budget")["status"] == "error"
    assert "monthly cap" in result.check("budget")["detail"]


def test_it_shows_what_is_left_of_the_monthly_cap(settings):
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY
    settings.MONTHLY_BUDGET_USD = "100"
    spend_this_month("12.5")

    result = preflight("--json")

    assert (result.exit_code, result.check("budget")["status"]) == (0, "ok")
    assert "87.5" in result.check("budget")["detail"]


@pytest.mark.parametrize("budget", ["0", "-5"])
def test_it_fails_on_a_batch_budget_of_zero_or_below(settings, budget):
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY
    settings.BATCH_BUDGET_USD = budget

    result = preflight("--json")

    assert result.exit_code == 1
    assert result.check("budget")["status"] == "error"
    assert "BATCH_BUDGET_USD" in result.check("budget")["detail"]


def test_it_fails_when_there_are_no_categories(settings):
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY
    Category.objects.all().delete()

    result = preflight("--json")

    assert result.exit_code == 1
    assert result.check("categories")["status"] == "error"


def test_it_only_warns_about_an_unreachable_broker(settings):
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"

    result = preflight("--json")

    assert result.check("broker")["status"] == "warning"
    assert "unreachable" in result.check("broker")["detail"]
    assert (result.exit_code, result.report["ready"]) == (0, True)


def test_it_never_prints_the_broker_password(settings):
    settings.CELERY_BROKER_URL = "redis://newsroom:Pw4Kd8Ls2Qa6Zx9@127.0.0.1:1/0"

    result = preflight()

    assert_not_leaked("Pw4Kd8Ls2Qa6Zx9", result.output)


def test_it_fails_on_a_database_without_migrations_naming_them(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}",
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "CELERY_BROKER_URL": "memory://",
    }

    result = subprocess.run(
        [sys.executable, "manage.py", "preflight", "--json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 1
    (database,) = [c for c in json.loads(result.stdout)["checks"] if c["name"] == "database"]
    assert database["status"] == "error"
    assert "migration" in database["detail"] and "manage.py migrate" in database["detail"]
    assert_not_leaked(ANTHROPIC_KEY, result.stdout + result.stderr)


# --- Can drafting authenticate? A key, or the local stand-in ---------------------------------------------------

def test_drafting_without_a_key_or_the_stand_in_is_an_error_that_says_how_to_fix_it(settings):
    from batches.preflight import ERROR, check_anthropic_key

    settings.ANTHROPIC_API_KEY, settings.CLAUDE_STANDIN = "", False
    check = check_anthropic_key()
    assert check.status == ERROR
    assert "every item would fail" in check.detail and "make serve" in check.detail


def test_the_stand_in_in_use_and_answering_is_ready_but_says_it_is_not_claude(settings):
    from batches.claude_standin import FakeAnthropicServer
    from batches.preflight import WARNING, check_anthropic_key, is_ready

    with FakeAnthropicServer() as standin:
        settings.CLAUDE_STANDIN, settings.STANDIN_PORT = True, standin.port
        check = check_anthropic_key()
    assert check.status == WARNING and is_ready([check])
    assert "stand-in" in check.detail and "not Claude" in check.detail and "ANTHROPIC_API_KEY" in check.detail


def test_the_stand_in_configured_but_not_running_is_an_error(settings):
    import socket

    from batches.preflight import ERROR, check_anthropic_key

    with socket.socket() as probe:  # a port nobody listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.CLAUDE_STANDIN, settings.STANDIN_PORT = True, port
    check = check_anthropic_key()
    assert check.status == ERROR and f"127.0.0.1:{port}" in check.detail


# --- Is a worker alive? ------------------------------------------------------------------------------------------

def test_no_worker_answering_the_ping_is_reported_with_the_command_that_starts_one(settings, redis_url):
    from tests.admin.conftest import celery_broker

    from batches.preflight import WARNING, check_worker

    with celery_broker(settings, redis_url):
        check = check_worker()
    assert check.status == WARNING
    assert "no worker answered" in check.detail and "make serve" in check.detail


def test_a_broker_that_is_down_means_no_worker_can_be_reached(settings):
    from tests.admin.conftest import celery_broker
    from tests.support import DOWN_BROKER_URL

    from batches.preflight import worker_status

    with celery_broker(settings, DOWN_BROKER_URL):
        status = worker_status()
    assert not status.alive and "broker is unreachable" in status.detail


def test_the_worker_ping_is_cached_for_a_few_seconds(settings, redis_url, monkeypatch):
    from newsroom.celery import app
    from tests.admin.conftest import celery_broker

    from batches.preflight import worker_status

    pings = []
    real_ping = app.control.ping
    monkeypatch.setattr(app.control, "ping", lambda **kwargs: pings.append(kwargs) or real_ping(**kwargs))
    with celery_broker(settings, redis_url):
        first, second = worker_status(), worker_status()
        fresh = worker_status(fresh=True)
    assert first == second == fresh and len(pings) == 2
