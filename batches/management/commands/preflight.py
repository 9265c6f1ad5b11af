from __future__ import annotations

import json

from django.core.management.base import CommandError

from newsroom.commands import ContractCommand

from batches.preflight import is_ready, run_checks

SYMBOLS = {"ok": "ok  ", "warning": "warn", "error": "FAIL"}


class Command(ContractCommand):
    help = "Check that a live batch can run: keys, database, categories, prices, broker, budget."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print one JSON object.")

    def handle(self, *args, as_json: bool = False, **options):
        checks = run_checks()
        ready = is_ready(checks)
        if as_json:
            self.stdout.write(json.dumps({"ready": ready, "checks": [c.as_dict() for c in checks]}))
        else:
            for check in checks:
                self.stdout.write(f"[{SYMBOLS[check.status]}] {check.name}: {check.detail}")
            self.stdout.write("Ready for a live batch." if ready else "Not ready: fix the FAIL lines above.")
        if not ready:
            raise CommandError("preflight: not ready for a live batch", returncode=1)
