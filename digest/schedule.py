"""Subscriber schedules and their slots. Pure: `now` is always passed in.

NOTE(skeleton): filled in by the schedule work.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    text: str  # as written in the config: "daily 08:00", "weekly mon 08:00", "0 8 * * 1-5"
