from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError

from newsroom.commands import ContractCommand

from topics.importing import ImportFailed, RowError, import_topics


class Command(ContractCommand):
    help = (
        "Import topics from a CSV (header row) or JSON (list of objects) file. Idempotent on (source, external_id). "
        "Errors name CSV rows as a spreadsheet numbers them (the header is row 1) and JSON items from 1."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument(
            "--skip-invalid", action="store_true", help="Import the valid rows and report the invalid ones."
        )

    def handle(self, *args, path: Path, skip_invalid: bool, **options):
        try:
            result = import_topics(path=path, skip_invalid=skip_invalid)
        except ImportFailed as exc:
            if exc.problem:
                self.stderr.write(f"{path}: {exc.problem}")
                raise CommandError(f"Nothing imported from {path}.", returncode=1) from None
            self.report(path, exc.errors, exc.error_count, prefix="")
            raise CommandError(f"Nothing imported: {exc.error_count:,} error(s) in {path}.", returncode=1) from None
        self.report(path, result.skipped, result.skipped_count, prefix="skipped ")
        self.stdout.write(
            f"Imported {path}: {result.created:,} created, {result.updated:,} updated, "
            f"{result.unchanged:,} unchanged, {result.skipped_count:,} skipped."
        )

    def report(self, path: Path, errors: list[RowError], count: int, *, prefix: str) -> None:
        for error in errors:
            self.stderr.write(f"{path}: {prefix}{error}")
        if count > len(errors):
            what = f"{prefix}{errors[0].unit}s" if prefix else "errors"
            self.stderr.write(f"{path}: … and {count - len(errors):,} more {what} not listed.")
