"""`make demo`, second half: preflight and a live batch end to end with no API key and no broker server.

Claude is played by the local stand-in (batches/claude_standin.py, as `make serve` uses it with no key), so the
real SDK, the ledger, the budget and a real Celery worker on kombu's filesystem broker all run for real; the
drafts' text is the stand-in's placeholder prose, labelled as such.

The sample topics link to sites that do not exist, so the demo serves a local copy of each page on 127.0.0.1
(bench/demo_pages.py) and points the topics at them by importing them again with those links
(SOURCE_FETCH_ALLOW_PRIVATE=1 lets the workers read them). Each draft is written from its page, cites it, and is
checked against it; the stand-in Claude slips one figure and one link that no source holds into a draft, so the
checks have something to flag.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.demo_pages import PageServer, serve_sample_pages

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "topics" / "sample_data" / "sample_topics.json"
LOCAL_SAMPLE = ROOT / "var" / "demo_topics_local_pages.json"


def point_topics_at_local_pages(server: PageServer, env: dict[str, str]) -> int:
    """Serve a copy of each sample topic's page and import the topics again with links to those copies."""
    topics = json.loads(SAMPLE.read_text(encoding="utf-8"))
    local = serve_sample_pages(server, topics)
    LOCAL_SAMPLE.write_text(json.dumps([{**t, "url": local.get(t.get("url") or "", t.get("url") or "")}
                                        for t in topics], indent=1), encoding="utf-8")
    subprocess.run([sys.executable, "manage.py", "import_topics", str(LOCAL_SAMPLE)], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return len(local)


def show_grounded_draft() -> None:
    """The last batch's draft with flags (else its first draft): its cited sources and what to check."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "newsroom.settings")
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    from batches.grounding import cited_sources
    from batches.models import Batch

    batch = Batch.objects.order_by("-pk").first()
    drafts = list(batch.newsletters.exclude(body_markdown="").prefetch_related("flags")) if batch else []
    if not drafts:
        return
    draft = next((d for d in drafts if d.flags.all()), drafts[0])
    flagged = sum(1 for d in drafts if d.flags.all())
    print(f"\nA grounded draft from batch #{batch.pk} (#{draft.pk}): “{draft.subject}”")
    cited = [line for line in draft.body_markdown.splitlines() if "[" in line and "]" in line]
    for line in cited[:2]:
        print(f"  > {line[:230]}")
    print("  Sources:" if cited_sources(draft) else "  Sources: none cited")
    for source in cited_sources(draft):
        print(f"    [{source['n']}] {source['title'] or 'Research notes'} — {source['url']}")
    print("  Check before approving:" if draft.flags.all() else "  No flag: every link and figure is in its sources.")
    for flag in draft.flags.all():
        print(f"    - {flag.get_kind_display()}: {flag.text}" + (f" — “{flag.sentence}”" if flag.sentence else ""))
    print(f"{flagged} of {len(drafts)} drafts have something to check; the review page shows each flag with its "
          "sentence highlighted.")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from batches.claude_standin import FakeAnthropicServer, Plant

    env = dict(os.environ)
    env.pop("CELERY_BROKER_URL", None)  # the embedded default: the filesystem broker under var/
    env.pop("DATABASE_URL", None)
    with FakeAnthropicServer(latency=0.5) as fake, PageServer() as pages:
        # Any free port: a `make serve` running meanwhile keeps STANDIN_PORT for its own stand-in.
        env.update(CLAUDE_STANDIN="1", STANDIN_PORT=str(fake.port), PYTHONPATH=str(ROOT),
                   SOURCE_FETCH_ALLOW_PRIVATE="1")
        print(f"\nDemo: a live batch, with Claude played by a local stand-in at {fake.base_url} (no API key needed).")
        preflight = subprocess.run([sys.executable, "manage.py", "preflight"], cwd=ROOT, env=env, timeout=60)
        if preflight.returncode != 0:
            return preflight.returncode
        served = point_topics_at_local_pages(pages, env)
        print(f"The sample topics' pages are served from {pages.base_url} ({served} pages); each draft is written "
              "from its page, cites it, and is checked against it.")
        fake.plant(Plant(figure="37.5%", link="https://unsourced.example.com/guide"))
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
            show_grounded_draft()
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
