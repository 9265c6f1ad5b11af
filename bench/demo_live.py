"""`make demo`, second half: preflight and a live batch end to end with no API key and no broker server.

Claude is played by the local stand-in (batches/claude_standin.py, as `make serve` uses it with no key), so the
real SDK, the ledger, the budget and a real Celery worker on kombu's filesystem broker all run for real; the
drafts' text is the stand-in's placeholder prose, labelled as such.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from batches.claude_standin import FakeAnthropicServer

    env = dict(os.environ)
    env.pop("CELERY_BROKER_URL", None)  # the embedded default: the filesystem broker under var/
    env.pop("DATABASE_URL", None)
    with FakeAnthropicServer(latency=0.5) as fake:
        # Any free port: a `make serve` running meanwhile keeps STANDIN_PORT for its own stand-in.
        env.update(CLAUDE_STANDIN="1", STANDIN_PORT=str(fake.port), PYTHONPATH=str(ROOT))
        print(f"\nDemo: a live batch, with Claude played by a local stand-in at {fake.base_url} (no API key needed).")
        preflight = subprocess.run([sys.executable, "manage.py", "preflight"], cwd=ROOT, env=env, timeout=60)
        if preflight.returncode != 0:
            return preflight.returncode
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "newsroom", "--quiet", "worker", "--pool", "threads", "--concurrency", "4",
             "--loglevel", "WARNING", "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env,
        )
        try:
            time.sleep(3)
            started = time.monotonic()
            result = subprocess.run(
                [sys.executable, "manage.py", "runbatch", "--queue", "--wait"], cwd=ROOT, env=env, timeout=300
            )
            print(f"Demo batch finished in {time.monotonic() - started:.1f} s with exit code {result.returncode}; "
                  f"{fake.message_calls} calls reached the stand-in API.")
            print("See it in the admin: create a login with `.venv/bin/python manage.py createsuperuser`, then "
                  "`make serve` and open http://127.0.0.1:8000/admin/ (without ANTHROPIC_API_KEY, `make serve` "
                  "starts this stand-in too, and every desk page says so).")
            return 0 if result.returncode in (0, 3, 4) else result.returncode
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()


if __name__ == "__main__":
    raise SystemExit(main())
