"""The base of Newsroom's management commands."""
from __future__ import annotations

import sys

from django.core.management.base import BaseCommand


class ContractCommand(BaseCommand):
    """A command whose bad arguments exit 1 with the usage and one clear message, as the interface contract says
    (argparse's own exit code for them is 2). Called through call_command, bad arguments raise CommandError."""

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        django_error = parser.error

        def error(message: str):
            if parser.called_from_command_line:
                parser.print_usage(sys.stderr)
                parser.exit(1, f"{parser.prog}: error: {message}\n")
            django_error(message)

        parser.error = error
        return parser
