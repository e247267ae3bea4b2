"""Load-time CSS inlining for the HTML email templates. Pure string work, no I/O.

Owns: reading the tiny stylesheet dialect of `templates/digest.css` and rewriting a
template's source so that every `class="a b"` becomes `style="..."` once, when the
template is loaded, instead of running a CSS inliner on every message.

The dialect: rules whose selectors are all plain classes (`.card, .box { ... }`) are
inlined. Everything else (`@media`, `:root`, element selectors) stays in the
`<style>` block in `<head>` (the `residue`); a class that such a rule mentions keeps
its `class` attribute too, so dark-mode and phone rules still reach the element.

Does not own: Jinja (see `render.py`, whose loader calls `inline_template`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from digest.errors import ConfigError

_COMMENT_RE = re.compile(r"/\*.*?\*/", re.DOTALL)
_CLASS_SELECTOR_RE = re.compile(r"^\.([A-Za-z_][\w-]*)$")
_CLASS_MENTION_RE = re.compile(r"\.([A-Za-z_][\w-]*)")
_TAG_RE = re.compile(r"<[A-Za-z][^<>]*>")
_CLASS_ATTR_RE = re.compile(r'\sclass="([^"]*)"')
_STYLE_ATTR_RE = re.compile(r'\sstyle="([^"]*)"')


@dataclass(frozen=True)
class Stylesheet:
    """A parsed stylesheet: declarations per class, and the rules left for `<head>`."""

    inline: dict[str, str]  # class name -> "prop:value;prop:value"
    residue: str  # CSS that cannot be inlined (media queries, :root, ...)
    residue_classes: frozenset[str]  # classes that the residue mentions

    def attrs_for(self, classes: str, *, own_style: str = "") -> str:
        """The attributes (with a leading space) that replace `class="classes"`."""
        names = classes.split()
        decls = [self.inline[n] for n in names if n in self.inline]
        if own_style:
            decls.append(own_style.strip().rstrip(";"))
        out = ""
        kept = [n for n in names if n in self.residue_classes]
        if kept:
            out += f' class="{" ".join(kept)}"'
        if decls:
            out += f' style="{";".join(d for d in decls if d)}"'
        return out


def parse_stylesheet(css: str, *, where: str = "digest.css") -> Stylesheet:
    """Split `css` into inlinable class rules and the residue for `<head>`."""
    text = _COMMENT_RE.sub(lambda m: "\n" * m.group(0).count("\n"), css)
    inline: dict[str, list[str]] = {}
    residue: list[str] = []
    pos = 0
    while True:
        open_at = text.find("{", pos)
        if open_at < 0:
            if text[pos:].strip():
                raise ConfigError(f"{where}: text after the last rule: {text[pos:].strip()[:40]!r}")
            break
        prelude = text[pos:open_at].strip()
        close_at = _matching_brace(text, open_at, where)
        body = text[open_at + 1 : close_at]
        pos = close_at + 1
        selectors = [s.strip() for s in prelude.split(",")]
        names = [_CLASS_SELECTOR_RE.match(s) for s in selectors]
        if prelude.startswith("@") or not all(names):
            residue.append(f"{prelude}{{{' '.join(body.split())}}}")
            continue
        decls = _parse_declarations(body, where=f"{where} ({prelude})")
        for name_match in names:
            assert name_match is not None  # checked by all() above
            inline.setdefault(name_match.group(1), []).append(decls)
    residue_text = "\n".join(residue)
    return Stylesheet(
        inline={name: ";".join(parts) for name, parts in inline.items()},
        residue=residue_text,
        residue_classes=frozenset(_CLASS_MENTION_RE.findall(residue_text)),
    )


def inline_template(source: str, sheet: Stylesheet, *, where: str) -> str:
    """Rewrite every `class="..."` in an HTML template source into inline styles.

    Line numbers are preserved (nothing spans a newline that was not there), so Jinja
    errors still point at the right line of the author's file.
    """

    def rewrite(tag_match: re.Match[str]) -> str:
        tag = tag_match.group(0)
        class_match = _CLASS_ATTR_RE.search(tag)
        if class_match is None:
            return tag
        classes = class_match.group(1)
        line = source.count("\n", 0, tag_match.start()) + 1
        if "{{" in classes or "{%" in classes:
            raise ConfigError(
                f"{where}, line {line}: class={classes!r} uses template code; "
                "inlined classes must be static"
            )
        for name in classes.split():
            if name not in sheet.inline and name not in sheet.residue_classes:
                raise ConfigError(f"{where}, line {line}: class {name!r} is not in the stylesheet")
        style_match = _STYLE_ATTR_RE.search(tag)
        own_style = style_match.group(1) if style_match else ""
        if style_match is not None:
            tag = tag[: style_match.start()] + tag[style_match.end() :]
            class_match = _CLASS_ATTR_RE.search(tag)
            assert class_match is not None  # removing style="" left class="" in place
        attrs = sheet.attrs_for(classes, own_style=own_style)
        return tag[: class_match.start()] + attrs + tag[class_match.end() :]

    return _TAG_RE.sub(rewrite, source)


def _matching_brace(text: str, open_at: int, where: str) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    line = text.count("\n", 0, open_at) + 1
    raise ConfigError(f"{where}, line {line}: '{{' is never closed")


def _parse_declarations(body: str, *, where: str) -> str:
    if "{" in body or '"' in body:
        raise ConfigError(f"{where}: nested braces or double quotes cannot be inlined")
    decls = []
    for raw in body.split(";"):
        decl = " ".join(raw.split())
        if not decl:
            continue
        prop, sep, value = decl.partition(":")
        if not sep or not prop.strip() or not value.strip():
            raise ConfigError(f"{where}: {decl!r} is not a 'property: value' declaration")
        decls.append(f"{prop.strip()}:{value.strip()}")
    return ";".join(decls)
