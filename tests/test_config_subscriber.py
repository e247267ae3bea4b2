"""`schema.Subscriber` kept as two references (its email, name and topics as one string,
its other settings shared): every field reads back as given, and it compares, hashes,
pickles and copies as the frozen dataclass it replaced did."""

from __future__ import annotations

import inspect
import pickle
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from digest.config import Subscriber, Topic, Topics, load_config
from digest.errors import ConfigError
from digest.schedule import parse_schedule

WEEKLY = parse_schedule("weekly fri 17:30")
TOPICS = (Topic("Diffusion", 'diffusion OR title:"score model"'), Topic("RL", "reward*"))
EVERY_FIELD = {
    "email": "grace@example.org",
    "schedule": WEEKLY,
    "timezone": "Europe/Berlin",
    "topics": Topics(TOPICS),
    "name": "Grace Hopper",
    "max_papers": 7,
    "min_upvotes": 3,
    "send_empty": True,
    "window_days": 9,
    "thumbnails": "none",
    "delivery": "feed",
}


def fields_of(subscriber: Subscriber) -> dict[str, object]:
    return {name: getattr(subscriber, name) for name in Subscriber.FIELDS}


def test_fields_are_the_constructors_parameters() -> None:
    assert tuple(inspect.signature(Subscriber).parameters) == Subscriber.FIELDS


def test_every_field_reads_back_as_given() -> None:
    subscriber = Subscriber(**EVERY_FIELD)  # type: ignore[arg-type]  # checked by the call
    assert fields_of(subscriber) == EVERY_FIELD
    assert subscriber.effective_window_days == 9 and subscriber.zone.key == "Europe/Berlin"


def test_defaults_and_an_absent_name_are_kept_apart_from_an_empty_one() -> None:
    bare = Subscriber(email="a@x.org", schedule=WEEKLY)
    assert fields_of(bare) == {
        "email": "a@x.org", "schedule": WEEKLY, "timezone": "UTC", "topics": Topics(),
        "name": None, "max_papers": 25, "min_upvotes": 0, "send_empty": False,
        "window_days": None, "thumbnails": "small", "delivery": "email",
    }  # fmt: skip
    empty_name = Subscriber(email="a@x.org", schedule=WEEKLY, name="")
    assert empty_name.name == "" and bare.name is None and empty_name != bare
    assert bare.effective_window_days == 8  # weekly's default


@pytest.mark.parametrize("field", [f for f in Subscriber.FIELDS if f not in ("email", "schedule")])
def test_each_field_takes_part_in_equality_and_hash(field: str) -> None:
    base = Subscriber(**EVERY_FIELD)  # type: ignore[arg-type]  # checked by the call
    other = {"timezone": "UTC", "topics": Topics(TOPICS[:1]), "name": None, "max_papers": 8,
             "min_upvotes": 0, "send_empty": False, "window_days": None,
             "thumbnails": "large", "delivery": "email"}[field]  # fmt: skip
    changed = base.replace(**{field: other})
    assert getattr(changed, field) == other and changed != base
    assert base.replace(**{field: EVERY_FIELD[field]}) == base
    assert hash(base.replace()) == hash(base) and hash(changed) != hash(base)


def test_equal_settings_are_one_object_and_a_pickle_round_trip_keeps_everything() -> None:
    ada = Subscriber(**{**EVERY_FIELD, "email": "ada@example.org"})  # type: ignore[arg-type]
    grace = Subscriber(**EVERY_FIELD)  # type: ignore[arg-type]  # checked by the call
    assert ada._settings is grace._settings  # what keeps 100k subscribers small
    back = pickle.loads(pickle.dumps((ada, grace)))
    assert back == (ada, grace) and [fields_of(s) for s in back] == [fields_of(ada), EVERY_FIELD]
    assert back[0]._settings is back[1]._settings


def test_a_subscriber_is_frozen_and_shows_its_fields() -> None:
    grace = Subscriber(**EVERY_FIELD)  # type: ignore[arg-type]  # checked by the call
    with pytest.raises(FrozenInstanceError):
        grace.email = "x@example.org"  # type: ignore[misc]  # what is tested
    with pytest.raises(FrozenInstanceError):
        del grace.name
    with pytest.raises(TypeError, match="no field colour"):
        grace.replace(colour="red")
    assert not hasattr(grace, "__dict__")
    assert repr(grace).startswith("Subscriber(email='grace@example.org', schedule=")
    assert "name='Grace Hopper', max_papers=7" in repr(grace)


@pytest.mark.parametrize("field", ["email", "name"])
def test_the_separator_in_an_email_or_name_given_in_code_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match="U\\+001F"):
        Subscriber(**{**EVERY_FIELD, field: "a\x1fb@x.org"})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["email", "name"])
def test_the_separator_in_an_email_or_name_in_the_file_is_a_clear_error(
    tmp_path: Path, field: str
) -> None:
    """An email or name holding U+001F would read back cut in two: the file is refused,
    at that key's line, and never gets as far as a Subscriber."""
    values = {"email": '"a@x.org"', "name": '"Ada"'}
    values[field] = '"a\\u001fb@x.org"'
    path = tmp_path / "digest.toml"
    path.write_text(
        '[mail]\nfrom = "d@example.org"\n\n[[subscribers]]\n'
        f"email = {values['email']}\nname = {values['name']}\n"
        'topics = [{ name = "A", query = "x" }]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    (problem,) = e.value.problems
    line = 5 if field == "email" else 6
    assert problem.startswith(f"{path}:{line}: subscribers[1]") and f".{field}: " in problem
    assert "\n" not in problem
