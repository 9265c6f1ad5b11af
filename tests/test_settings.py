from __future__ import annotations

import os
import secrets
import string
import subprocess
import sys
from pathlib import Path

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
