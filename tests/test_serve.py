"""`make serve` (newsroom/serve.py): which processes start, and the stand-in for Claude when there is no key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from newsroom.serve import announce, plan

REPO_ROOT = Path(__file__).resolve().parents[1]


def procfile() -> dict[str, str]:
    lines = (REPO_ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_with_a_key_make_serve_starts_web_worker_and_beat_and_no_stand_in():
    names, extra = plan(environment={"ANTHROPIC_API_KEY": "sk-ant-real-key"})
    assert names == ["web", "worker", "beat"] and extra == {}
    assert "from Claude" in announce(extra=extra, environment={})


def test_without_a_key_make_serve_also_starts_the_stand_in_and_says_so():
    names, extra = plan(environment={"ANTHROPIC_API_KEY": "  "})
    assert names == ["web", "worker", "beat", "standin"] and extra == {"CLAUDE_STANDIN": "1"}
    message = announce(extra=extra, environment={"STANDIN_PORT": "9911"})
    assert "stand-in" in message and "9911" in message and "ANTHROPIC_API_KEY" in message


def test_every_process_make_serve_names_is_in_the_procfile_and_the_stand_in_port_is_configurable():
    entries = procfile()
    assert set(plan(environment={})[0]) <= set(entries)
    assert "batches.claude_standin" in entries["standin"] and "${STANDIN_PORT:-8765}" in entries["standin"]
    assert entries["beat"] == ".venv/bin/celery -A newsroom beat --loglevel INFO"


def test_the_stand_in_setting_points_drafting_at_the_stand_in_port():
    code = ("from django.conf import settings; "
            "print(settings.ANTHROPIC_BASE_URL, bool(settings.ANTHROPIC_API_KEY), settings.CLAUDE_STANDIN)")
    result = subprocess.run(
        [sys.executable, "-c", f"import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', "
                               f"'newsroom.settings'); django.setup(); {code}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", "CLAUDE_STANDIN": "1", "STANDIN_PORT": "9911",
             "ANTHROPIC_API_KEY": ""},
    )
    assert result.stdout.split() == ["http://127.0.0.1:9911", "True", "True"], result.stderr


def test_the_wsgi_app_loads_its_urls_and_freezes_what_it_loaded_before_the_first_request():
    # gunicorn imports newsroom.wsgi in each worker: by then the admin (reached only through the URLconf) is loaded
    # and every object so far is out of the cycle collector's reach, so no full collection walks them in a request.
    code = ("import gc, sys; import newsroom.wsgi; "
            "print(gc.get_freeze_count(), 'topics.admin' in sys.modules, 'django.contrib.admin.sites' in sys.modules)")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", "ANTHROPIC_API_KEY": ""},
    )
    frozen, admin_loaded, sites_loaded = result.stdout.split()
    assert int(frozen) > 50_000, result.stderr
    assert admin_loaded == sites_loaded == "True"
