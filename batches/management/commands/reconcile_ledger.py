from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from batches.ledger import reconcile


class Command(BaseCommand):
    help = ("Check the running totals kept on batches and months against the sum of their ledger entries. Exit 0 "
            "when they all agree, 1 when any differs; --fix corrects them under the budget locks.")

    def add_arguments(self, parser):
        parser.add_argument("--fix", action="store_true", help="Set every total that differs to the sum.")
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print one JSON object.")

    def handle(self, *args, **opts):
        drifts = reconcile(fix=opts["fix"])
        if opts["as_json"]:
            self.stdout.write(json.dumps({
                "agree": not drifts, "fixed": bool(opts["fix"] and drifts),
                "drifts": [{"scope": d.scope, "field": d.field, "kept": str(d.kept), "summed": str(d.summed)}
                           for d in drifts],
            }))
        elif not drifts:
            self.stdout.write("Every running total agrees with the ledger.")
        else:
            for d in drifts:
                self.stdout.write(f"{d.scope}: {d.field} is {d.kept}, its entries sum to {d.summed}")
            self.stdout.write(f"{len(drifts)} total(s) differed" + ("; corrected." if opts["fix"] else
                                                                    "; run with --fix to correct them."))
        if drifts and not opts["fix"]:
            raise CommandError("running totals differ from the ledger", returncode=1)
