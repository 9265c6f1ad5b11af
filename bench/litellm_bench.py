"""LiteLLM beside Newsroom (issue 12), against the same loopback fake of the Anthropic API:

* what keeping the budget costs per call: LiteLLM's BudgetManager (its check before the call and its record
  after, as its documentation shows them) against Newsroom's reserve + settle, with the fake answering at once;
* what 16 threads calling at once spend of a $0.10 budget, the fake answering in 2 s: LiteLLM with its
  BudgetManager, LiteLLM with `litellm.max_budget`, and Newsroom's ledger, which must never go over.

LiteLLM is installed by this benchmark into a virtual environment of its own (var/bench-litellm-venv, the version
pinned below), never into the project's; its side runs there (bench/litellm_peer.py). When it cannot be
installed (no package index), that side is skipped and the reason printed. Newsroom's side runs on a database
this run creates and drops (PostgreSQL at BENCH_POSTGRES_URL, else SQLite).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

from bench.common import percentile, setup_django
from bench.fresh import fresh_database, machine_load, postgres_reachable, spread, verdict

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VERSION = "1.110.2"
VENV = ROOT / "var" / "bench-litellm-venv"
MODEL = "claude-sonnet-4-6"
PROMPT = [{"role": "user", "content": "Write a short newsletter item for independent online sellers about "
                                      "parcel carriers raising their small-package rates."}]
MAX_TOKENS = 512
CALLS = 100
THREADS = 16
BUDGET = Decimal("0.10")
RUNS = 3
CALL_LIMIT = 64  # a budget that never stops its callers is cut off here (about three times what $0.10 buys)
SLOW = 2.0


def litellm_python() -> tuple[Path | None, str]:
    """The virtual environment's python with LiteLLM LITELLM_VERSION installed, or None and why not."""
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == LITELLM_VERSION:
        return python, "already installed"
    started = time.perf_counter()
    steps = [[sys.executable, "-m", "venv", "--clear", str(VENV)],
             [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              f"litellm=={LITELLM_VERSION}"]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            return None, f"`{' '.join(step[-3:])}` took over 15 minutes"
        if done.returncode:
            errors = [line for line in done.stderr.splitlines() if "ERROR" in line or "rror" in line]
            return None, (errors or done.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return python, f"installed in {time.perf_counter() - started:.0f} s"


def cost(*, input_tokens: int, output_tokens: int) -> Decimal:
    """One yardstick for both sides: the tokens the fake reported, at Newsroom's price for the model."""
    from batches.pricing import Usage, cost_of, price_for

    return cost_of(usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens), price=price_for(MODEL))


class Newsroom:
    """Newsroom's side: the ledger around each call, as batches/generation.py does it (count once, reserve the
    worst case, call, settle the actual cost)."""

    def __init__(self, base_url: str):
        import anthropic

        from batches.generation import reservation_tokens
        from batches.pricing import price_for, worst_case_cost

        self.client = anthropic.Anthropic(base_url=base_url, api_key="bench-key-not-a-secret", max_retries=0)
        self.price = price_for(MODEL)
        counted = self.client.messages.count_tokens(model=MODEL, messages=PROMPT).input_tokens
        self.worst_case = worst_case_cost(input_tokens=reservation_tokens(counted), max_tokens=MAX_TOKENS,
                                          price=self.price)

    def call(self, batch_id: int) -> tuple[tuple[int, int] | None, float]:
        """One call within the budget: its (input, output) tokens, or None when the budget refused it; and the
        milliseconds spent on the ledger."""
        from batches import ledger
        from batches.pricing import Usage, cost_of

        started = time.perf_counter()
        try:
            reservation = ledger.reserve(idempotency_key=f"litellm-bench:{uuid.uuid4().hex}", batch_id=batch_id,
                                         worst_case_usd=self.worst_case, model=MODEL, description="litellm bench")
        except ledger.BudgetExhausted:
            return None, (time.perf_counter() - started) * 1000
        reserved = time.perf_counter()
        message = self.client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=PROMPT)
        answered = time.perf_counter()
        usage = Usage.from_api(message.usage)
        ledger.settle(entry_id=reservation.entry_id, actual_usd=cost_of(usage=usage, price=self.price), usage=usage)
        took = (reserved - started + time.perf_counter() - answered) * 1000
        return (usage.input_tokens, usage.output_tokens), took

    def overhead(self) -> list[float]:
        batch_id = new_batch(Decimal("100000"))
        self.call(batch_id)  # warm
        return [self.call(batch_id)[1] for _ in range(CALLS)]

    def overspend(self) -> dict:
        from django.db import connection

        batch_id = new_batch(BUDGET)
        lock, tokens, calls = threading.Lock(), [0, 0], [0]
        start = threading.Barrier(THREADS)

        def work() -> None:
            try:
                start.wait()
                while (outcome := self.call(batch_id)[0]) is not None:
                    with lock:
                        tokens[0], tokens[1], calls[0] = tokens[0] + outcome[0], tokens[1] + outcome[1], calls[0] + 1
            finally:
                connection.close()

        workers = [threading.Thread(target=work) for _ in range(THREADS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return {"calls": calls[0], "input_tokens": tokens[0], "output_tokens": tokens[1]}


def new_batch(budget: Decimal) -> int:
    from batches.models import Batch

    return Batch.objects.create(budget_usd=budget, model=MODEL).pk


def overspend_line(label: str, runs: list[dict], *, cut_off: bool) -> str:
    spent = [cost(input_tokens=r["input_tokens"], output_tokens=r["output_tokens"]) for r in runs]
    ratios = [float(s / BUDGET) for s in spent]
    over = sum(s > BUDGET for s in spent)
    never = sum(r["calls"] >= CALL_LIMIT for r in runs) if cut_off else 0
    line = (f"    {label}: spent {spread([float(s) for s in spent], '${:.3f}'.format)} = "
            f"{spread(ratios, '{:.2f}x'.format)} the budget in {spread([r['calls'] for r in runs], '{:.0f}'.format)} "
            f"calls; over in {over} of {len(runs)} runs")
    if never:
        line += f"; never stopped in {never} of {len(runs)} runs (the bench cut it off at {CALL_LIMIT} calls)"
    return line


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from batches.claude_standin import FakeAnthropicServer

    started = time.perf_counter()
    python, how = litellm_python()
    vendor = "postgresql" if postgres_reachable() is None else "sqlite"
    with FakeAnthropicServer() as quick, FakeAnthropicServer(latency=SLOW) as slow, \
            fresh_database(vendor=vendor, purpose="litellm") as url:
        os.environ["DJANGO_DEBUG"] = "0"
        setup_django(database_url=url)
        print(f"litellm bench: LiteLLM {LITELLM_VERSION} in {VENV.relative_to(ROOT)} ({how})" if python else
              f"litellm bench: LiteLLM {LITELLM_VERSION} could NOT be installed in {VENV.relative_to(ROOT)} ({how}); "
              f"its side is skipped, Newsroom's is measured")
        print(f"  Newsroom on {vendor} (a fresh database); the same fake API for both: answering at once for the "
              f"overhead, in {SLOW:g} s for the overspend; {MODEL}, max_tokens {MAX_TOKENS}; {machine_load()}")
        peer = None
        if python:
            plan = {"quick_url": quick.base_url, "slow_url": slow.base_url, "calls": CALLS, "max_tokens": MAX_TOKENS,
                    "threads": THREADS, "budget": float(BUDGET), "runs": RUNS, "call_limit": CALL_LIMIT}
            done = subprocess.run([str(python), str(ROOT / "bench" / "litellm_peer.py"), json.dumps(plan)],
                                  capture_output=True, text=True, timeout=900)
            if done.returncode:
                print(f"  LiteLLM's side failed: {(done.stderr.strip().splitlines() or ['no output'])[-1][:300]}")
            else:
                peer = json.loads(done.stdout.strip().splitlines()[-1])
        newsroom = Newsroom(quick.base_url)
        ours = newsroom.overhead()
        newsroom = Newsroom(slow.base_url)
        our_runs = [newsroom.overspend() for _ in range(RUNS)]
        print(f"  budget overhead per call, {CALLS} calls one after another, median (p90):")
        print(f"    Newsroom reserve + settle: {statistics.median(ours):.2f} ms ({percentile(ours, 0.9):.2f} ms)")
        if peer:
            theirs = [c + u for c, u in zip(peer["overhead"]["check_ms"], peer["overhead"]["update_ms"], strict=True)]
            print(f"    LiteLLM BudgetManager check + update_cost: {statistics.median(theirs):.2f} ms "
                  f"({percentile(theirs, 0.9):.2f} ms); Newsroom's costs {statistics.median(ours) / statistics.median(theirs):.1f}x "
                  f"LiteLLM's (issue 12: close the gap, keep the guarantee)")
        print(f"  ${BUDGET} budget, {THREADS} threads calling at once, {RUNS} runs, median (min–max):")
        if peer:
            print(overspend_line("LiteLLM BudgetManager", peer["budget_manager"], cut_off=True))
            print(overspend_line("LiteLLM max_budget", peer["max_budget"], cut_off=True))
        over = sum(cost(input_tokens=r["input_tokens"], output_tokens=r["output_tokens"]) > BUDGET for r in our_runs)
        print(f"{overspend_line('Newsroom ledger', our_runs, cut_off=False)} (target 0): {verdict(over == 0)}")
    print(f"  litellm bench took {time.perf_counter() - started:.0f} s; {machine_load()}")
    return 0 if over == 0 else 1  # a missed timing is printed; only an overspend fails the bench


if __name__ == "__main__":
    raise SystemExit(main())
