"""The base of Newsroom's management commands."""
from __future__ import annotations

import argparse
import json
import sys

from django.core.management.base import BaseCommand, CommandError, DjangoHelpFormatter


class _HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Django's order of options, and the epilog printed as written (a table of exit codes keeps its lines)."""


def _asks_for_json(argv: list[str]) -> bool:
    """Whether the command line has --json (or a prefix argparse would take for it), before any `--`."""
    for arg in argv:
        if arg == "--":
            return False
        if len(arg) >= 3 and "--json".startswith(arg):
            return True
    return False


class ContractCommand(BaseCommand):
    """A command that keeps the interface contract of DESIGN.md.

    Bad arguments exit 1 with the usage and one clear message (argparse's own exit code for them is 2; called
    through call_command, they raise CommandError). A command whose --json output has an error shape
    (`json_error`) prints exactly one JSON object on stdout whatever happens: its report, or that error object
    when it fails -- bad arguments, a CommandError, or an exception nobody foresaw (whose traceback still goes to
    stderr). `epilog` is printed at the end of --help as written.
    """

    epilog: str | None = None

    def json_error(self, message: str) -> dict | None:
        """The object --json prints when the command fails with `message`; None when it has no such shape."""
        return None

    def write_json(self, payload: dict) -> None:
        """Print the command's one JSON object."""
        self.stdout.write(json.dumps(payload))
        self._json_written = True

    def create_parser(self, prog_name, subcommand, **kwargs):
        if self.epilog:
            kwargs.setdefault("epilog", self.epilog)
            kwargs.setdefault("formatter_class", _HelpFormatter)
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        django_error = parser.error

        def error(message: str):
            if parser.called_from_command_line:
                if _asks_for_json(getattr(self, "_argv", [])[2:]):
                    self._write_json_error(f"{parser.prog}: {message}", stream=sys.stdout)
                parser.print_usage(sys.stderr)
                parser.exit(1, f"{parser.prog}: error: {message}\n")
            django_error(message)

        parser.error = error
        return parser

    def run_from_argv(self, argv):
        self._argv = list(argv)
        return super().run_from_argv(argv)

    def execute(self, *args, **options):
        self._json_wanted = bool(options.get("as_json"))
        self._json_written = False
        try:
            return super().execute(*args, **options)
        except CommandError as exc:
            self._write_json_error(str(exc))
            raise
        except Exception as exc:
            self._write_json_error(f"unexpected error: {exc.__class__.__name__}: {exc}")
            raise

    def _write_json_error(self, message: str, *, stream=None) -> None:
        if stream is None and (not getattr(self, "_json_wanted", False) or getattr(self, "_json_written", False)):
            return
        try:
            payload = self.json_error(message)
        except Exception as exc:  # the database may be what failed: say what we can rather than nothing
            payload = self.json_error_fallback(message, exc)
        if payload is None:
            return
        if stream is not None:
            stream.write(json.dumps(payload) + "\n")
            stream.flush()
        else:
            self.write_json(payload)

    def json_error_fallback(self, message: str, exc: Exception) -> dict | None:
        """The error object when `json_error` itself failed (by default: nothing)."""
        return None
