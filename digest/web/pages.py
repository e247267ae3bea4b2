"""The endpoint's HTML pages: a Jinja environment over the shipped `templates/pages/`.

Owns: loading the page templates (a folder in `[mail] templates` may override any of
them by the same name, e.g. `pages/preferences.html.j2`), autoescaping, and how an
address is shown on a page (`masked`). Does not own what a page says in reply to what
(the route modules) or the emails' templates (`digest/render/`).

The pages look like the email (the same colours, dark mode, a 600 px column that
shrinks on a phone) and need no JavaScript: every action is a form that POSTs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from digest.errors import ConfigError
from digest.render import shipped_templates_dir

PAGES = ("page.html.j2", "unsubscribe.html.j2", "unsubscribed.html.j2",
         "preferences.html.j2", "error.html.j2")  # fmt: skip


class Pages:
    """The page templates, loaded once."""

    def __init__(self, templates_dir: Path | None = None) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if templates_dir is not None:
            loaders.append(jinja2.FileSystemLoader(templates_dir))
        loaders.append(jinja2.FileSystemLoader(shipped_templates_dir()))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        self.env.filters["masked"] = masked
        try:
            self.templates = {name: self.env.get_template(f"pages/{name}") for name in PAGES}
        except jinja2.TemplateError as e:
            raise ConfigError(f"page template {getattr(e, 'name', '?')}: {e.message}") from e

    def render(self, name: str, **context: Any) -> str:
        return self.templates[name].render(**context)


def masked(email: str) -> str:
    """ "ada@example.org" -> "a**@example.org": enough to recognise, not to harvest."""
    user, _, domain = email.partition("@")
    if not domain:
        return "***"
    return f"{user[:1]}{'*' * max(2, len(user) - 1)}@{domain}"
