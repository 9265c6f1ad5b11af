"""A durable spool for answers that arrived while the database was away.

An answer from Claude has been paid for. When its draft and settlement cannot be written (the database is down
past the write retries), the answer goes to a file under ANSWER_SPOOL_DIR instead of being lost; the sweeper (and
every drafting task as it starts) replays the spool once the database is back. Each file is written to a temporary
name, flushed and renamed, so a crash never leaves half a record behind.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError

logger = logging.getLogger("newsroom.spool")


def spool_dir() -> Path:
    return Path(settings.ANSWER_SPOOL_DIR)


def write(record: dict[str, Any]) -> Path:
    """Keep `record` (JSON-serialisable, with an `entry_id`) on disk until it is replayed."""
    folder = spool_dir()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"answer-{record['entry_id']}.json"
    temporary = folder / f".answer-{record['entry_id']}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(record, handle, ensure_ascii=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    return final


def pending() -> list[Path]:
    folder = spool_dir()
    if not folder.is_dir():
        return []
    return sorted(folder.glob("answer-*.json"))


def replay(apply: Callable[[dict[str, Any]], None]) -> int:
    """Apply every spooled answer; each file is removed once written. Stops at the first database error."""
    replayed = 0
    for path in pending():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue  # another sweeper on this machine replayed it meanwhile
        except ValueError:
            # Cannot happen with our own atomic writes; keep the file aside for a human rather than lose it.
            logger.error("spooled answer %s is unreadable; moved aside", path.name)
            path.rename(path.with_suffix(".unreadable"))
            continue
        try:
            apply(record)
        except DatabaseError as exc:
            logger.warning("spooled answers wait: the database is still unavailable (%s)", exc.__class__.__name__)
            break
        path.unlink(missing_ok=True)
        replayed += 1
    return replayed
