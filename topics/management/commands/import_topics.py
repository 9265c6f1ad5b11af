from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError

from newsroom.commands import ContractCommand

from topics.importing import ImportFailed, import_topics


class Command(ContractCommand):
    help = "Import topics from a CSV (header row) or JSON (list of objects) file. Idempotent on (source, external_id)."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument(
            "--skip-invalid", action="store_true", help="Import the valid rows and report the invalid ones."
        )

    def handle(self, *args, path: Path, skip_invalid: bool, **options):
        try:
            result = import_topics(path=path, skip_invalid=skip_invalid)
        except ImportFailed as exc:
            for error in exc.errors:
                self.stderr.write(f"{path}: {error}" if error.row else str(error.message))
            raise CommandError(
                f"Nothing imported: {len(exc.errors)} error(s) in {path}." if exc.errors[0].row
                else "Nothing imported.",
                returncode=1,
            ) from None
        for error in result.skipped:
            self.stderr.write(f"{path}: skipped {error}")
        self.stdout.write(
            f"Imported {path}: {result.created} created, {result.updated} updated, "
            f"{result.unchanged} unchanged, {len(result.skipped)} skipped."
        )
