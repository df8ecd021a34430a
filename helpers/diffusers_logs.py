"""A filter for one misleading diffusers log line, used where the kit casts modules to their own dtype."""

from __future__ import annotations

import logging
from contextlib import contextmanager


class _EmptyFp32ListFilter(logging.Filter):
    """Drops diffusers' "modules ... should be kept in float32: []" note, logged even when nothing is cast."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


@contextmanager
def without_empty_fp32_notes():
    """Hide only that note; every other diffusers warning still shows."""
    target = logging.getLogger("diffusers.models.modeling_utils")
    note_filter = _EmptyFp32ListFilter()
    target.addFilter(note_filter)
    try:
        yield
    finally:
        target.removeFilter(note_filter)
