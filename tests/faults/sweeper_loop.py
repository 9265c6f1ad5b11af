"""`python -m tests.faults.sweeper_loop PERIOD`: the sweeper every PERIOD seconds until killed, as beat runs it
every minute, only sooner; each report is printed as one JSON line.

A database that is down makes that round fail; the next round tries again, as the next beat tick would.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    period = float(argv[1]) if len(argv) > 1 else 1.0
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "newsroom.settings")
    import django

    django.setup()
    from django.db import DatabaseError, connection

    from batches.sweeper import sweep

    while True:
        started = time.monotonic()
        try:
            report = sweep()
        except DatabaseError as exc:
            print(json.dumps({"error": f"{exc.__class__.__name__}: {exc}".strip()}), flush=True)
            connection.close()
        else:
            print(json.dumps(dataclasses.asdict(report), default=str), flush=True)
        time.sleep(max(0.0, period - (time.monotonic() - started)))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
