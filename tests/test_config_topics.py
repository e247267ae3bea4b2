"""A subscriber's topics as `schema.Topics` (one string, Topic objects made on demand),
and the loader's bounded memory of checked queries."""

from __future__ import annotations

from pathlib import Path

import pytest

from digest.config import Subscriber, Topic, Topics, load_config
from digest.config import subscribers as subscriber_rules
from digest.errors import ConfigError
from digest.schedule import parse_schedule

TWO = (Topic("Diffusion & <co>", 'diffusion OR title:"score model"'), Topic("RL", "reward*"))


def test_topics_give_back_what_they_were_made_of() -> None:
    topics = Topics(TWO)
    assert tuple(topics) == TWO and list(topics) == list(TWO)  # twice: nothing consumed
    assert len(topics) == 2 and topics[1] == TWO[1] and topics[-1] == TWO[1]
    assert topics[:1] == Topics(TWO[:1]) and isinstance(topics[:1], Topics)
    assert topics.names == ["Diffusion & <co>", "RL"]
    assert topics.queries == ['diffusion OR title:"score model"', "reward*"]
    assert Topics.of_pairs((t.name, t.query) for t in TWO) == topics
    assert hash(Topics(list(TWO))) == hash(topics) and Topics(TWO[::-1]) != topics
    assert repr(topics) == f"Topics({TWO!r})"
    with pytest.raises(IndexError):
        topics[2]


def test_no_topics_is_empty_not_one_blank_topic() -> None:
    for empty in (Topics(), Topics(()), Topics.of_pairs([])):
        assert len(empty) == 0 and not empty and list(empty) == []
        assert empty.names == [] and empty.queries == []
    one_empty_name = Topics([Topic("", "x")])  # not valid in a file, but kept apart from none
    assert len(one_empty_name) == 1 and list(one_empty_name) == [Topic("", "x")]


def test_a_subscriber_keeps_whatever_sequence_it_is_given_as_topics() -> None:
    daily = parse_schedule("daily 08:00")
    given_tuple = Subscriber(email="a@x.org", schedule=daily, topics=TWO)
    given_topics = Subscriber(email="a@x.org", schedule=daily, topics=Topics(TWO))
    assert type(given_tuple.topics) is Topics and given_tuple == given_topics
    assert hash(given_tuple) == hash(given_topics)
    fewer = given_tuple.replace(topics=[TWO[1]])
    assert type(fewer.topics) is Topics and list(fewer.topics) == [TWO[1]]
    assert given_tuple.replace(topics=()).topics == Topics()


def write(tmp_path: Path, subscribers: str) -> Path:
    path = tmp_path / "digest.toml"
    path.write_text('[mail]\nfrom = "d@example.org"\n\n' + subscribers, encoding="utf-8")
    return path


@pytest.mark.parametrize("key", ["name", "query"])
def test_the_separator_in_a_topic_is_a_clear_error(tmp_path: Path, key: str) -> None:
    """U+001F joins a subscriber's topics: a name or query holding it would come back as
    two topics, so the file is refused, at that key's line."""
    topic = {"name": '"A"', "query": '"x"'}
    topic[key] = '"a\\u001fb"'
    path = write(
        tmp_path,
        '[[subscribers]]\nemail = "a@x.org"\ntopics = [\n  { name = "Fine", query = "y" },\n'
        f"  {{ name = {topic['name']}, query = {topic['query']} }},\n]\n",
    )
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    assert e.value.problems == [
        f"{path}:8: subscribers[1] (a@x.org).topics[2].{key}: "
        "must not contain the control character U+001F"
    ]


def test_queries_forgotten_as_checked_are_checked_again_with_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loader remembers at most CHECKED_QUERIES checked queries; past that it forgets
    them all and checks again: the Config is the same, and a bad query met after the
    forgetting is still reported."""
    queries = ["q1", "q2", "q3", "q1", "q2 OR q3", "q1"]
    tables = "".join(
        f'[[subscribers]]\nemail = "u{i}@x.org"\n'
        f'topics = [{{ name = "T", query = "{q}" }}, {{ name = "U", query = "q1" }}]\n\n'
        for i, q in enumerate(queries)
    )
    path = write(tmp_path, tables)
    remembered = load_config(path, {})
    monkeypatch.setattr(subscriber_rules, "CHECKED_QUERIES", 2)
    forgetful = load_config(path, {})
    assert forgetful.subscribers == remembered.subscribers
    assert list(forgetful.subscribers[3].topics) == [Topic("T", "q1"), Topic("U", "q1")]
    bad = write(
        tmp_path,
        tables + '[[subscribers]]\nemail = "z@x.org"\ntopics = [{ name = "B", query = "a )" }]\n',
    )
    with pytest.raises(ConfigError) as e:
        load_config(bad, {})
    assert (
        len(e.value.problems) == 1
        and "subscribers[7] (z@x.org).topics[1].query" in e.value.problems[0]
    )
