"""How counts and durations read in every line the program prints or logs. Pure.

Owns: `plural` ("1 day", "2 days", "1 poll"), `count` (the same with the number) and
`duration` (`30m`, `1h30m`, `90s`, `2d`: the way the config file writes durations, never
Python's `0:30:00`). Does not own what any line says.
"""

from __future__ import annotations

import datetime as dt


def plural(n: int, word: str) -> str:
    """`word` as it goes after `n`: "day" -> "days" unless n is 1 (or -1)."""
    if abs(n) == 1:
        return word
    head, _, tail = word.partition(" ")  # "due slot" -> "due slots": the last noun counts
    if tail:
        return f"{head} {plural(n, tail)}"
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def count(n: int, word: str) -> str:
    """ "1 day", "3 days", "0 papers"."""
    return f"{n} {plural(n, word)}"


def duration(value: dt.timedelta | float) -> str:
    """A duration as the config writes one: `30m`, `1h30m`, `6h`, `2d`, `90s`, `1.5s`.

    Whole units from days down to seconds, largest first; under a minute, seconds with
    at most one decimal."""
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    if seconds < 60:
        return f"{seconds:.1f}".rstrip("0").rstrip(".") + "s"
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, whole = divmod(whole, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)
