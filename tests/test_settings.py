from __future__ import annotations

import os
import runpy
import secrets
import string
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

REPO_ROOT = Path(__file__).resolve().parents[1]
# Variables that would change what the production defaults are; each test sets what it is about.
OVERRIDES = (
    "DJANGO_SECURE_SSL_REDIRECT", "DJANGO_SESSION_COOKIE_SECURE", "DJANGO_CSRF_COOKIE_SECURE",
    "DJANGO_SECURE_HSTS_SECONDS", "DATABASE_URL",
)


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=60,
    )


def random_secret_key() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits + "!@#%^&*(-_=+)") for _ in range(50))


def test_it_passes_the_deploy_check_in_production_mode():
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING",
        DJANGO_DEBUG="0", SECRET_KEY=random_secret_key(), ALLOWED_HOSTS="newsroom.example.com",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    assert "WARNING" not in result.stderr


def test_it_refuses_to_start_in_production_mode_without_a_secret_key():
    result = manage("check", DJANGO_DEBUG="0", SECRET_KEY="", ALLOWED_HOSTS="newsroom.example.com")

    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_it_runs_without_a_secret_key_in_debug_mode():
    result = manage("check", DJANGO_DEBUG="1", SECRET_KEY="")

    assert result.returncode == 0, result.stderr


def test_it_refuses_a_batch_budget_that_is_not_a_number():
    result = manage("check", DJANGO_DEBUG="1", BATCH_BUDGET_USD="forty")

    assert result.returncode != 0
    assert "BATCH_BUDGET_USD='forty' is not a number" in result.stderr


def test_it_takes_the_desks_time_zone_from_the_environment():
    result = manage("shell", "-c", "from django.conf import settings; print(settings.TIME_ZONE)",
                    DJANGO_DEBUG="1", TIME_ZONE="Europe/Berlin")

    assert result.stdout.strip().splitlines()[-1] == "Europe/Berlin", result.stderr


def test_it_refuses_a_time_zone_that_does_not_exist():
    result = manage("check", DJANGO_DEBUG="1", TIME_ZONE="Mars/Olympus_Mons")

    assert result.returncode != 0
    assert "TIME_ZONE='Mars/Olympus_Mons' is not a time zone name" in result.stderr


# --- numeric settings ------------------------------------------------------------------------------

SETTINGS_FILE = REPO_ROOT / "newsroom" / "settings.py"


def load_settings(monkeypatch, **env: str) -> dict:
    """Run the settings module afresh with these environment variables (they win over .env) and return its names."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS_FILE))


BAD_NUMBERS = [
    ("BATCH_BUDGET_USD", "1e309", "is out of range: it must be a number in USD from 0.000001 to 1,000,000."),
    ("BATCH_BUDGET_USD", "1e28", "is out of range"),
    ("BATCH_BUDGET_USD", "0", "is out of range"),
    ("BATCH_BUDGET_USD", "-1", "is out of range"),
    ("BATCH_BUDGET_USD", "0.0000001", "is out of range"),
    ("BATCH_BUDGET_USD", "Infinity", "is not a finite number"),
    ("MONTHLY_BUDGET_USD", "NaN", "is not a finite number: it must be a number in USD from 0.000001 to 1,000,000."),
    ("MONTHLY_BUDGET_USD", "lots", "is not a number"),
    ("BATCH_SIZE", "abc", "is not a whole number: it must be a whole number from 1 to 100."),
    ("BATCH_SIZE", "8.5", "is not a whole number"),
    ("BATCH_SIZE", "0", "is out of range"),
    ("BATCH_SIZE", "101", "is out of range"),
    ("ANTHROPIC_MAX_TOKENS", "0", "is out of range: it must be a whole number from 1 to 128,000."),
    ("ANTHROPIC_MAX_TOKENS", "1000000", "is out of range"),
    ("ANTHROPIC_TIMEOUT_SECONDS", "inf", "is not a finite number"),
    ("ANTHROPIC_TIMEOUT_SECONDS", "0", "is out of range"),
    ("ANTHROPIC_MAX_RETRIES", "-1", "is out of range"),
    ("ANTHROPIC_RETRY_BASE_SECONDS", "nan", "is not a finite number"),
    ("ANTHROPIC_RETRY_MAX_SECONDS", "1e400", "is not a finite number"),
    ("CELERY_TASK_TIME_LIMIT", "0", "is out of range"),
    ("CELERY_TASK_SOFT_TIME_LIMIT", "soon", "is not a whole number"),
    ("CELERY_VISIBILITY_TIMEOUT", "-5", "is out of range"),
    ("CELERY_BROKER_CONNECTION_MAX_RETRIES", "many", "is not a whole number"),
    ("DATABASE_CONN_MAX_AGE", "-1", "is out of range"),
    ("DJANGO_SECURE_HSTS_SECONDS", "1e3", "is not a whole number"),
    ("ITEM_LEASE_SECONDS", "0", "is out of range"),
    ("ITEM_MAX_CLAIMS", "0", "is out of range"),
    ("SWEEP_STALE_SECONDS", "NaN", "is not a whole number"),
    ("ANSWER_WRITE_RETRY_SECONDS", "-1", "is out of range"),
    ("RESERVATION_INPUT_MARGIN", "NaN", "is not a finite number"),
    ("RESERVATION_INPUT_EXTRA_TOKENS", "-1", "is out of range"),
    ("IMPORT_MAX_BYTES", "0", "is out of range: it must be a whole number of bytes from 1 to"),
    ("REDDIT_MIN_SCORE", "high", "is not a whole number"),
    ("PERPLEXITY_USD_PER_MILLION_INPUT", "-1", "is out of range"),
    ("PERPLEXITY_USD_PER_REQUEST", "sNaN", "is not a finite number"),
    ("TUBELAB_USD_PER_CREDIT", "1e309", "is out of range"),
    ("APIFY_MAX_CHARGE_USD", "0", "is out of range"),
    ("ECONOMY_GONE_AFTER_SECONDS", "30", "is out of range: it must be a number from 60 to 2,592,000."),
    ("ECONOMY_GONE_AFTER_SECONDS", "nan", "is not a finite number"),
    ("ECONOMY_GONE_AFTER_SECONDS", "a day", "is not a number"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_NUMBERS)
def test_it_refuses_a_numeric_setting_that_is_not_a_finite_number_in_range(monkeypatch, name, value, message):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        load_settings(monkeypatch, **{name: value})

    assert str(excinfo.value).startswith(f"{name}={value!r} ")
    assert message in str(excinfo.value)


def test_it_shows_a_huge_value_cut_short(monkeypatch):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        load_settings(monkeypatch, BATCH_BUDGET_USD="9" * 5000)

    assert len(str(excinfo.value)) < 200


def test_it_reads_numeric_settings_as_numbers(monkeypatch):
    loaded = load_settings(
        monkeypatch, BATCH_BUDGET_USD="12.5", MONTHLY_BUDGET_USD="300", BATCH_SIZE=" 12 ", ANTHROPIC_TIMEOUT_SECONDS="30",
        APIFY_MAX_CHARGE_USD="0.75", REDDIT_MIN_SCORE="25",
    )

    assert (loaded["BATCH_BUDGET_USD"], loaded["MONTHLY_BUDGET_USD"]) == (Decimal("12.5"), Decimal(300))
    assert (loaded["BATCH_SIZE"], loaded["ANTHROPIC_TIMEOUT_SECONDS"]) == (12, 30.0)
    assert (loaded["APIFY_MAX_CHARGE_USD"], loaded["REDDIT_MIN_SCORE"]) == ("0.75", 25)


def test_it_leaves_the_monthly_cap_off_when_it_is_empty(monkeypatch):
    assert load_settings(monkeypatch, MONTHLY_BUDGET_USD="")["MONTHLY_BUDGET_USD"] == ""


def test_manage_py_prints_a_bad_setting_as_one_line_and_exits_1():
    result = manage("check", DJANGO_DEBUG="1", BATCH_BUDGET_USD="1e309")

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Configuration error: BATCH_BUDGET_USD='1e309' is out of range: it must be a number in USD from 0.000001 to "
        "1,000,000."
    ]


def test_celery_prints_a_bad_setting_as_one_line_and_exits_1():
    celery = Path(sys.executable).with_name("celery")
    environment = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    environment.update(DJANGO_DEBUG="1", BATCH_SIZE="abc")

    result = subprocess.run([str(celery), "-A", "newsroom", "worker"], cwd=REPO_ROOT, env=environment,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Configuration error: BATCH_SIZE='abc' is not a whole number: it must be a whole number from 1 to 100."
    ]
