"""Renderer.forget: what one planning run cached for its papers is dropped after it (the
daemon calls it after each run), and rendering after it gives the same bytes."""

from __future__ import annotations

from digest.config import Topic
from digest.render import Renderer, render_digest_bytes
from digest.render import renderer as renderer_module
from digest.topics.match import PaperIndex, compile_topics, match_subscriber
from tests.render_helpers import MAIL, NOW, SLOT, corpus_papers, make_subscriber


def test_forget_empties_every_paper_cache_and_changes_no_byte() -> None:
    renderer = Renderer()
    papers = corpus_papers()
    topics = [Topic("Agents", "agent* OR \"language model*\""), Topic("Video", "video OR image*")]
    matches = match_subscriber(PaperIndex.build(papers), compile_topics(topics), min_upvotes=0,
                               max_papers=12)  # fmt: skip
    assert matches
    args = {"subscriber": make_subscriber(), "slot": SLOT, "mail": MAIL, "now": NOW,
            "matches": matches}  # fmt: skip

    def sizes() -> list[int]:
        caches = renderer_module._PAPER_CACHES
        return [cache.cache_info().currsize for cache in caches]

    first = render_digest_bytes(renderer, **args)  # type: ignore[arg-type]
    assert all(sizes()), sizes()  # each cache took something: the list names real caches
    assert renderer._skeletons is not None and renderer._skeletons._cache
    renderer.forget()
    assert sizes() == [0] * len(sizes())
    assert not renderer._skeletons._cache
    assert render_digest_bytes(renderer, **args) == first  # type: ignore[arg-type]
