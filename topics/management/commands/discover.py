from __future__ import annotations

import json

from django.core.management.base import CommandError

from newsroom.commands import ContractCommand

from topics.discovery import run_as_dict, run_discovery, run_problem, summary_lines
from topics.sources import SOURCES


class Command(ContractCommand):
    help = "Fetch fresh candidate topics from the configured sources (Reddit, Perplexity, TubeLab, Apify)."

    def add_arguments(self, parser):
        parser.add_argument("--source", action="append", dest="sources", choices=list(SOURCES),
                            help="Only this source (repeatable). Default: every source.")
        parser.add_argument("--limit", type=int, default=50, help="Candidates per source (1-1000).")
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print one JSON object.")

    def handle(self, *args, sources, limit: int, as_json: bool, **options):
        if not 1 <= limit <= 1000:
            raise CommandError(f"--limit must be between 1 and 1000, got {limit}", returncode=1)
        run = run_discovery(names=sources, limit=limit)
        if as_json:
            self.stdout.write(json.dumps(run_as_dict(run)))
        else:
            self.stdout.write("\n".join(summary_lines(run)))
        if problem := run_problem(run):
            raise CommandError(problem, returncode=1)
