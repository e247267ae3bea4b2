"""Render: a subscriber's matches -> Jinja templates -> HTML and text -> message bytes. Pure.

Owns: the Jinja environment and the 100 KB HTML cap (`renderer.py`), CSS folded into
`style=""` once when the templates load (`css.py`), the words of a digest: summaries,
authors, highlighting, the subject (`text.py`), and the headers and MIME layout of the
message (`message.py`). The templates themselves live in the repository's
`templates/` (shipped inside the wheel as `digest/templates`). Does not own choosing or
ranking papers (`digest/topics/`), storing the message (`digest/store/outbox.py`) or
sending it (`digest/mail/`). No clock, no database, no network.
"""

from digest.render.message import (
    ONE_CLICK,
    DigestBodies,
    RecipientLinks,
    build_digest_bytes,
    build_digest_message,
    message_id_for,
    render_plain_message,
)
from digest.render.renderer import (
    HTML_CAP_BYTES,
    Renderer,
    pack_html,
    render_digest,
    render_digest_bodies,
    render_digest_bytes,
    shipped_templates_dir,
)

__all__ = [
    "HTML_CAP_BYTES",
    "ONE_CLICK",
    "DigestBodies",
    "RecipientLinks",
    "Renderer",
    "build_digest_bytes",
    "build_digest_message",
    "message_id_for",
    "pack_html",
    "render_digest",
    "render_digest_bodies",
    "render_digest_bytes",
    "render_plain_message",
    "shipped_templates_dir",
]
