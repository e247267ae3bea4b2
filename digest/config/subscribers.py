"""The [[subscribers]] tables and [defaults] into Subscribers: the largest part of a file.

Owns: every rule of a subscriber key (email, schedule, topics, ...), the defaults
table, duplicate emails, "feed" without [web], and the sharing that keeps a
100,000-subscriber Config small and quick to build: one Schedule per schedule text,
a subscriber's topics in one string (`schema.Topics`), each distinct query checked
once (while it is remembered: CHECKED_QUERIES). Does not own the
other tables (`build.py`), reporting (`reader.py`), nor what a query means
(`digest/topics/query.py`: `check_query` is called to validate).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Set
from typing import Any

from digest.config.chunks import MIDDLE, Piece, pieces_after
from digest.config.halves import Half, second_half
from digest.config.lines import Path as KeyPath
from digest.config.reader import Reader
from digest.config.schema import (
    DELIVERIES,
    THUMBNAILS,
    TOPIC_SEPARATOR,
    Subscriber,
    Topics,
)
from digest.config.values import (
    Invalid,
    at_least,
    boolean,
    describe,
    lowercase_operators,
    name_value,
    non_empty,
    one_of,
    parse_email,
    parse_schedule_value,
    parse_timezone,
    query_message,
    single_line,
    topic_query,
)
from digest.errors import QuerySyntaxError
from digest.schedule import parse_schedule

SUBSCRIBER_KEYS = Subscriber.FIELDS
DEFAULT_KEYS = tuple(k for k in SUBSCRIBER_KEYS if k not in ("email", "name"))
SHARED_KEYS = ("timezone", "schedule")  # one value object per distinct text, for everyone
SUBSCRIBER_VALUES: dict[str, Callable[[Any], Any]] = {  # the checks of the keys but topics
    "email": parse_email,
    "name": name_value,
    "timezone": parse_timezone,
    "schedule": parse_schedule_value,
    "max_papers": at_least(1),
    "min_upvotes": at_least(0),
    "send_empty": boolean,
    "window_days": at_least(1),
    "thumbnails": one_of(*THUMBNAILS),
    "delivery": one_of(*DELIVERIES),
}
FEED_NEEDS_WEB = '"feed" needs a [web] table: the feed is served at /f/TOKEN.atom'
DEFAULT_SCHEDULE = "daily 08:00"  # when neither the subscriber nor [defaults] gives one
# distinct queries remembered as checked (then forgotten all at once): enough for the
# queries a big file repeats, without holding every query's text until the file is read
CHECKED_QUERIES = 1 << 14


class SubscriberRules(Reader):
    """The Reader with the rules of [defaults] and [[subscribers]]."""

    def warn_lowercase_operators(self, where: KeyPath, query: str) -> None:
        """`diffusion or gan` is three words ANDed (0 papers on a day `diffusion OR gan`
        matches 341): say so, with the upper-case form when that parses."""
        words, fixed = lowercase_operators(query)
        if not words:
            return
        from digest.topics.query import parse_query  # imported late: the rare case

        shown = ", ".join(f'"{w}"' for w in dict.fromkeys(words))
        try:
            parse_query(fixed)
            hint = f"; for the operator write it in upper case: {fixed}"
        except QuerySyntaxError:
            hint = "; AND, OR and NOT are operators only in upper case"
        self.warning(where, f"{shown} is matched as a plain word here{hint}")

    # -- subscribers

    def subscribers(
        self, defaults_raw: object, chunks: Iterable[object], *, web: bool,
        middle: int | None = None,
    ) -> tuple[Subscriber, ...]:  # fmt: skip
        """Every valid subscriber of `chunks` ([[subscribers]] tables in lists, or in the
        Pieces of the text they were read from, in order). With `middle` (chunks then
        has MIDDLE at that byte offset of the file), the pieces after it are read by a
        child process at the same time (`halves.py`)."""
        defaults_t = self.table(("defaults",), defaults_raw, DEFAULT_KEYS)
        defaults: dict[str, Any] = {}
        for key, value in defaults_t.items():
            ok, converted = self.subscriber_key(("defaults",), key, value)
            if ok:
                defaults[key] = converted
        if not web and defaults.get("delivery") == "feed":
            self.problem(("defaults", "delivery"), FEED_NEEDS_WEB)
            web = True  # said once for the table, not again for every subscriber
        # a subscriber that does not set a key whose default is bad is not valid either
        read = _Read(self, defaults, defaults_t.keys() - defaults.keys(), web)
        later = None if middle is None else functools.partial(read.second_half, middle)
        with second_half(later) as child:
            for chunk in chunks:
                if chunk is not MIDDLE:
                    if not read.chunk(chunk):
                        return ()
                elif child is not None and read.took(child.take()):
                    break  # the child read the rest
        self.current = self.piece = self._piece_lines = None
        return tuple(read.out)

    def subscriber(
        self,
        i: int,
        raw: object,
        defaults: dict[str, Any],
        bad_defaults: Set[str],
        seen: dict[str, int],
        web: bool,
    ) -> Subscriber | None:
        """The i-th [[subscribers]] table as a Subscriber; None if it has a problem."""
        where: KeyPath = ("subscribers", i)
        self.current = (i, raw)
        t = self.table(where, raw, SUBSCRIBER_KEYS)
        values = dict(defaults)  # the subscriber's own keys override them
        ok = isinstance(raw, dict)
        for key, value in t.items():
            good, values[key] = self.subscriber_key(where, key, value)
            ok = ok and good
        if bad_defaults and not bad_defaults <= t.keys():
            ok = False
        email = values.get("email")
        if isinstance(raw, dict) and "email" not in t:
            self.problem(where, "missing email")
            ok = False
        elif email is not None and email in seen:
            first = seen[email]
            self.problem(
                (*where, "email"),
                f'duplicate email "{email}" (also '
                f"subscribers[{first + 1}] at line "
                f"{self.line(('subscribers', first, 'email'))})",
            )
            ok = False
        elif email is not None:
            seen[email] = i
        if isinstance(raw, dict) and (
            values.get("topics") == () or ("topics" not in values and "topics" not in bad_defaults)
        ):
            self.problem(where, "no topics; add topics = [{ name = ..., query = ... }]")
            ok = False
        if not web and t.get("delivery") == "feed":
            self.problem((*where, "delivery"), FEED_NEEDS_WEB)
            ok = False
        if not ok:
            return None
        values.setdefault("schedule", parse_schedule(DEFAULT_SCHEDULE))
        return Subscriber(**values)

    def subscriber_key(self, where: KeyPath, key: str, value: object) -> tuple[bool, Any]:
        """Validate one subscriber (or [defaults]) key; (False, None) if reported bad."""
        if key == "topics":
            topics = self.topics((*where, key), value)
            return topics is not None, topics
        shareable = key in SHARED_KEYS and isinstance(value, str)
        if shareable and (key, value) in self.shared:
            return True, self.shared[(key, value)]
        try:
            converted = SUBSCRIBER_VALUES[key](value)
        except Invalid as e:
            self.problem((*where, key), str(e))
            return False, None
        if shareable:
            self.shared[(key, value)] = converted
        return True, converted

    def topics(self, where: KeyPath, value: object) -> Topics | None:
        if not isinstance(value, list):
            self.problem(
                where, f"expected an array of {{ name, query }} tables, got {describe(value)}"
            )
            return None
        pairs: list[tuple[str, str]] = []
        names: set[str] = set()
        ok = True
        for k, raw in enumerate(value):
            pair = self.known_topic(raw)
            if pair is None or pair[0] in names:
                pair = self.topic((*where, k), raw, names)
            if pair is None:
                ok = False
                continue
            names.add(pair[0])
            pairs.append(pair)
        return Topics.of_pairs(pairs) if ok else None

    def known_topic(self, raw: object) -> tuple[str, str] | None:
        """(name, query) of a table equal to one already checked (exactly name and
        query): 100k subscribers share many topics, and each is checked once."""
        if type(raw) is not dict or len(raw) != 2:
            return None
        query = raw.get("query")
        if type(query) is not str:
            return None
        name = self.checked_queries.get(query)
        return (name, query) if name is not None and name == raw.get("name") else None

    def name_and_query(self, where: KeyPath, raw: object) -> tuple[str | None, str | None]:
        """A topic table's name and query, each None if missing or bad (reported)."""
        if type(raw) is dict and len(raw) == 2:  # the usual table: checked without copies
            try:
                usual = single_line(raw["name"]), non_empty(raw["query"])
                if TOPIC_SEPARATOR not in usual[0] and TOPIC_SEPARATOR not in usual[1]:
                    return usual
            except (KeyError, Invalid):
                pass  # not the usual table after all: say what is wrong below
        t = self.table(where, raw, ("name", "query"))
        name = self.field(t, where, "name", None, name_value)
        query = self.field(t, where, "query", None, topic_query)
        for key in ("name", "query"):
            if key not in t and isinstance(raw, dict):
                self.problem(where, f"missing {key}")
        return name, query

    def topic(self, where: KeyPath, raw: object, names: set[str]) -> tuple[str, str] | None:
        """One { name, query } table, checked; None if it has a problem (reported)."""
        from digest.topics.query import check_query  # imported late: only to validate queries

        name, query = self.name_and_query(where, raw)
        if name is not None and name in names:
            self.problem((*where, "name"), f'duplicate topic name "{name}"')
            name = None
        checked = query is not None and query in self.checked_queries
        if query is not None and not checked:
            try:
                check_query(query)
                self.warn_lowercase_operators((*where, "query"), query)
            except QuerySyntaxError as e:
                self.problem((*where, "query"), query_message(e))
                query = None
        if name is None or query is None:
            return None
        if not checked:
            if len(self.checked_queries) >= CHECKED_QUERIES:
                self.checked_queries.clear()
            self.checked_queries[query] = name
        return name, query


class _Read:
    """The subscribers read so far, chunk by chunk, and what reading more needs."""

    def __init__(
        self, rules: SubscriberRules, defaults: dict[str, Any], bad_defaults: Set[str], web: bool
    ) -> None:
        self.rules, self.defaults, self.bad_defaults, self.web = rules, defaults, bad_defaults, web
        self.out: list[Subscriber] = []
        self.seen: dict[str, int] = {}  # email -> index of its table
        self.i = 0  # the index of the next table

    def chunk(self, chunk: object) -> bool:
        """Read a list of tables, or a Piece's; False (reported) if it is not a list."""
        rules = self.rules
        if isinstance(chunk, Piece):
            rules.in_piece(self.i, chunk.text, chunk.lines_before)
            chunk = chunk.tables
        if not isinstance(chunk, list):
            got = describe(chunk)
            rules.problem(("subscribers",), f"expected [[subscribers]] tables, got {got}")
            return False
        for raw in chunk:
            sub = rules.subscriber(
                self.i, raw, self.defaults, self.bad_defaults, self.seen, self.web
            )
            if sub is not None:
                self.out.append(sub)
            self.i += 1
        return True

    def second_half(self, middle: int) -> Half | None:
        """In the child: the subscribers from `middle` on, if each is valid and none
        is warned about (a warning would not know what the first half said)."""
        rules = self.rules
        problems, warnings = len(rules.problems), len(rules.warnings)
        self.i, pieces = pieces_after(rules.path, middle)
        first = self.i
        for piece in pieces:
            self.chunk(piece)
        if len(rules.problems) > problems or len(rules.warnings) > warnings:
            return None
        return Half(first, self.out)

    def took(self, half: Half | None) -> bool:
        """In the parent, at the middle: add the child's `half` if it starts here and
        shares no email with what was read before; False (read on) if not."""
        if half is None or half.first != self.i:
            return False
        if any(s.email in self.seen for s in half.subscribers):
            return False  # a duplicate: the parent reports it, with both lines
        self.out.extend(half.subscribers)
        return True
