"""LiteLLM's side of bench/litellm_bench.py. It runs in the benchmark's own virtual environment (LiteLLM is no
dependency of Newsroom's), imports nothing of the project, and prints one JSON object on stdout.

    python litellm_peer.py PLAN_JSON

PLAN_JSON: {"quick_url", "slow_url", "calls", "max_tokens", "threads", "budget", "runs", "call_limit"}: the
per-call overhead against the fake that answers at once (quick_url), then the overspend runs against the fake
that answers in seconds (slow_url), first with the BudgetManager, then with litellm.max_budget.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time

MODEL = "anthropic/claude-sonnet-4-6"
PROMPT = [{"role": "user", "content": "Write a short newsletter item for independent online sellers about "
                                      "parcel carriers raising their small-package rates."}]


def call(litellm, base_url: str, max_tokens: int):
    return litellm.completion(model=MODEL, messages=PROMPT, max_tokens=max_tokens, api_base=base_url,
                              api_key="bench-key-not-a-secret")


def budget_manager(litellm, budget: float):
    # Its "local" client keeps the costs in memory and saves them to user_cost.json in the working directory.
    os.chdir(tempfile.mkdtemp(prefix="litellm-bench-"))
    manager = litellm.BudgetManager(project_name="newsroom-bench", client_type="local")
    manager.create_budget(total_budget=budget, user="bench")
    return manager


def overhead(litellm, base_url: str, calls: int, max_tokens: int) -> dict:
    """The BudgetManager's per-call work, as its documentation shows it: check before the call, record after."""
    manager = budget_manager(litellm, 1_000_000.0)
    call(litellm, base_url, max_tokens)  # warm: the first call loads LiteLLM's provider code
    check_ms, update_ms = [], []
    for _ in range(calls):
        started = time.perf_counter()
        allowed = manager.get_current_cost(user="bench") <= manager.get_total_budget(user="bench")
        checked = time.perf_counter()
        response = call(litellm, base_url, max_tokens)
        answered = time.perf_counter()
        manager.update_cost(completion_obj=response, user="bench")
        update_ms.append((time.perf_counter() - answered) * 1000)
        check_ms.append((checked - started) * 1000)
        assert allowed
    return {"check_ms": check_ms, "update_ms": update_ms, "recorded_usd": manager.get_current_cost(user="bench")}


def overspend(litellm, base_url: str, threads: int, max_tokens: int, budget: float, mode: str,
              call_limit: int) -> dict:
    """`threads` workers call until the budget stops them, or until CALL_LIMIT calls in all if it never does.
    Returns the calls made and the tokens their answers reported (the caller prices them)."""
    manager = budget_manager(litellm, budget) if mode == "budget_manager" else None
    if mode == "max_budget":
        litellm.max_budget, litellm._current_cost = budget, 0
    lock, made, stopped, tokens = threading.Lock(), [0], [0], {"input": 0, "output": 0}
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        while True:
            with lock:
                if made[0] >= call_limit:
                    return
                made[0] += 1
            try:
                if manager is not None and manager.get_current_cost(user="bench") >= manager.get_total_budget(
                        user="bench"):
                    raise litellm.BudgetExceededError(current_cost=0, max_budget=budget)
                response = call(litellm, base_url, max_tokens)
            except litellm.BudgetExceededError:
                with lock:
                    made[0] -= 1
                    stopped[0] += 1
                return
            with lock:
                tokens["input"] += response.usage.prompt_tokens
                tokens["output"] += response.usage.completion_tokens
            if manager is not None:
                manager.update_cost(completion_obj=response, user="bench")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    recorded = manager.get_current_cost(user="bench") if manager else litellm._current_cost
    litellm.max_budget = 0.0
    return {"calls": made[0], "stopped_workers": stopped[0], "recorded_usd": recorded,
            "input_tokens": tokens["input"], "output_tokens": tokens["output"]}


def main(argv: list[str]) -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price list from the network
    import importlib.metadata

    import litellm

    litellm.suppress_debug_info = True
    plan = json.loads(argv[0])
    result = {"litellm": importlib.metadata.version("litellm"),
              "overhead": overhead(litellm, plan["quick_url"], plan["calls"], plan["max_tokens"])}
    call(litellm, plan["slow_url"], 1)  # warm against the slow fake too (max_tokens=1, outside every budget)
    for mode in ("budget_manager", "max_budget"):
        result[mode] = [overspend(litellm, plan["slow_url"], plan["threads"], plan["max_tokens"], plan["budget"],
                                  mode, plan["call_limit"]) for _ in range(plan["runs"])]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
