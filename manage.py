#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "newsroom.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A bad setting (a budget that is not a number, a size out of range...) is one line for the operator to fix,
        # not a traceback through Django's start-up.
        message = " ".join(str(exc).split())
        sys.stderr.write(f"Configuration error: {message}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
