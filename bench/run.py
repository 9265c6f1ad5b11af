"""`make bench`: run every benchmark in its own process and print the figures the issues ask for."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ["bench.selection_bench", "bench.budget_bench", "bench.parallel_bench", "bench.caching_bench",
           "bench.discovery_bench", "bench.import_bench", "bench.changelist_bench", "bench.material_bench",
           "bench.recovery_bench", "bench.economy_bench", "bench.litellm_bench"]


def main() -> int:
    failures = 0
    for module in BENCHES:
        if importlib.util.find_spec(module) is None:
            continue
        print(f"== {module}", flush=True)
        result = subprocess.run([sys.executable, "-m", module], cwd=ROOT)
        if result.returncode:
            print(f"   {module} failed with exit code {result.returncode}")
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
