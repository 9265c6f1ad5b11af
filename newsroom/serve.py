"""`make serve`: the web process, a Celery worker and beat under honcho; with no ANTHROPIC_API_KEY, also the local
stand-in for Claude (batches/claude_standin.py), so a newcomer's batches draft something instead of failing.

The environment is read as the settings read it (real variables win over `.env`), decided on once here, and
handed to honcho whole (`-e /dev/null`: honcho's own reading of `.env` would let the file win over real variables).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
PROCESSES = ("web", "worker", "beat")


def plan(*, environment: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The Procfile processes to start and the variables to add: the stand-in joins them when no key is set."""
    if environment.get("ANTHROPIC_API_KEY", "").strip():
        return list(PROCESSES), {}
    return [*PROCESSES, "standin"], {"CLAUDE_STANDIN": "1"}


def announce(*, extra: Mapping[str, str], environment: Mapping[str, str]) -> str:
    if not extra.get("CLAUDE_STANDIN"):
        return "Starting web, worker and beat; drafts come from Claude (ANTHROPIC_API_KEY is set)."
    port = environment.get("STANDIN_PORT") or "8765"
    return (f"No ANTHROPIC_API_KEY: drafts will come from the local stand-in for Claude on port {port} "
            "(placeholder text, make-believe costs). To draft for real, set ANTHROPIC_API_KEY in .env and run "
            "`make serve` again.")


def main() -> int:
    # As the settings do: `.env` fills in only what the real environment leaves unset.
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
    environment = dict(os.environ)
    names, extra = plan(environment=environment)
    print(announce(extra=extra, environment=environment), flush=True)
    honcho = str(Path(sys.executable).with_name("honcho"))
    os.chdir(BASE_DIR)
    os.execve(honcho, [honcho, "start", "-e", "/dev/null", *names], {**environment, **extra})
    return 0  # not reached: honcho has taken over the process


if __name__ == "__main__":
    raise SystemExit(main())
