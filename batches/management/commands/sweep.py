from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from batches.sweeper import sweep


class Command(BaseCommand):
    help = ("Take back items whose lease expired, publish again batches and items nothing picked up, close batches "
            "whose items are all final, and replay answers spooled during a database outage. Idempotent; beat runs "
            "it every minute.")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print one JSON object.")

    def handle(self, *args, **opts):
        try:
            report = sweep()
        except DatabaseError as exc:
            raise CommandError(f"The database is unavailable ({exc.__class__.__name__}); nothing was swept.",
                               returncode=1) from None
        if opts["as_json"]:
            self.stdout.write(json.dumps(report.as_dict()))
        else:
            self.stdout.write(
                f"Sweep: {report.replayed} spooled answer(s) written, {report.requeued_items} interrupted item(s) "
                f"back in line, {report.failed_items} failed after repeated interruptions, "
                f"{report.republished_items} item task(s) and {report.republished_batches} batch task(s) published "
                f"again, {report.closed_batches} batch(es) closed, {report.closed_discovery_runs} abandoned discovery "
                f"run(s) closed."
            )
            for error in report.errors:
                self.stderr.write(f"Not done: {error}")
        if report.errors:
            raise CommandError("some work could not be queued (see above); the next sweep tries again", returncode=1)
