"""Turns an assistant's Markdown reply into HTML that is safe to put in the workspace page.

A model's reply is untrusted text: it may repeat whatever a user, a document or a web page put
in front of the model, hostile HTML included. So the reply goes through two independent
defences: markdown-it renders it with raw HTML switched off (any ``<tag>`` in the reply comes
out as visible text), and then nh3 sanitises the result against a short allow-list of tags,
attributes, CSS classes and link schemes. Either defence alone would stop the usual attacks;
both stay so that a mistake in one is not a hole.

Fenced code is highlighted by Pygments with CSS classes only (the page's content security
policy forbids inline styles); :func:`pygments_css` is the stylesheet for those classes, light
and dark.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.style import StyleMeta
from pygments.styles import get_style_by_name
from pygments.token import STANDARD_TYPES, _TokenType
from pygments.token import Token as PygmentsToken
from pygments.util import ClassNotFound

__all__ = [
    "ALLOWED_TAGS",
    "ALLOWED_URL_SCHEMES",
    "LINK_REL",
    "pygments_css",
    "render_markdown",
    "sanitize_html",
]

logger = logging.getLogger(__name__)

ALLOWED_TAGS: frozenset[str] = frozenset(
    {
        "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "code",
        "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th",
        "td", "span", "div",
    }
)  # fmt: skip
ALLOWED_URL_SCHEMES: frozenset[str] = frozenset({"http", "https", "mailto"})
LINK_REL = "noopener noreferrer nofollow"

# The CSS class that wraps a highlighted block, and the token classes Pygments may put on
# the spans inside it; any other class is dropped by the sanitiser.
HIGHLIGHT_CLASS = "highlight"
_TOKEN_CLASSES: frozenset[str] = frozenset(c for c in STANDARD_TYPES.values() if c)

# Pygments lexes about 1 KB of code per millisecond here, most of a reply's rendering time.
# So one reply highlights at most this much code; later blocks are shown plain (escaped),
# which keeps a 20 KB reply under 20 ms whatever it holds.
HIGHLIGHT_BUDGET_CHARS = 6_000
# Each highlighted block also costs a fixed setup, charged as this many characters.
_BLOCK_COST_CHARS = 100
_BUDGET_KEY = "domicile_highlight_budget"

# WCAG AA: every token colour of these two styles has a contrast of at least 4.5:1 against
# the style's background (checked in tests/workspace/test_rendering.py).
LIGHT_STYLE = "xcode"
DARK_STYLE = "monokai"

_sanitizer = nh3.Cleaner(
    tags=set(ALLOWED_TAGS),
    # script and style vanish with their content; anything else not allowed keeps its text.
    clean_content_tags={"script", "style"},
    attributes={"a": {"href", "title"}},
    allowed_classes={"span": set(_TOKEN_CLASSES), "div": {HIGHLIGHT_CLASS}},
    url_schemes=set(ALLOWED_URL_SCHEMES),
    # Only absolute http/https/mailto links: a relative link would point into the workspace.
    url_relative="deny",
    link_rel=LINK_REL,
    strip_comments=True,
)


def sanitize_html(fragment: str) -> str:
    """Return ``fragment`` reduced to the allow-list (tags, attributes, classes, schemes)."""
    return _sanitizer.clean(fragment)


@lru_cache(maxsize=128)
def _lexer_for(language: str) -> Lexer | None:
    """The Pygments lexer for a fence's language name, or None when there is none."""
    if not language or len(language) > 64:
        return None
    try:
        return get_lexer_by_name(language.lower())
    except ClassNotFound:
        return None


_code_formatter = HtmlFormatter(cssclass=HIGHLIGHT_CLASS, wrapcode=True, nobackground=True)


def _render_fence(
    renderer: Any, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """A fenced block: highlighted by Pygments when its language is known, else plain."""
    token = tokens[idx]
    language = token.info.strip().split(maxsplit=1)[0] if token.info.strip() else ""
    lexer = _lexer_for(language)
    budget = int(env.get(_BUDGET_KEY, HIGHLIGHT_BUDGET_CHARS))
    cost = len(token.content) + _BLOCK_COST_CHARS
    if lexer is None or cost > budget:
        # markdown-it's own rendering escapes both the code and the language name.
        return str(renderer.fence(tokens, idx, options, env))
    env[_BUDGET_KEY] = budget - cost
    return str(highlight(token.content, lexer, _code_formatter))


def _render_image(
    renderer: Any, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """An image in a reply becomes a link to it: a reply never makes the browser fetch."""
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = str(renderer.renderInlineAsText(token.children or [], options, env)) or src
    return f'<a href="{html.escape(src, quote=True)}">{html.escape(alt, quote=False)}</a>'


def _build_markdown() -> MarkdownIt:
    # html=False: raw HTML in a reply is text, not markup (the first of the two defences).
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    md.add_render_rule("fence", _render_fence)
    md.add_render_rule("image", _render_image)
    # markdown-it writes ~~text~~ as <s>; the allow-list has the semantic <del>.
    md.add_render_rule("s_open", lambda *_: "<del>")
    md.add_render_rule("s_close", lambda *_: "</del>")
    return md


_markdown = _build_markdown()


def render_markdown(text: str) -> str:
    """Render a Markdown reply to sanitised HTML; never raises for any ``str``."""
    # Lone surrogates (possible in a Python str, never in UTF-8) would stop the sanitiser.
    text = text.encode("utf-8", "replace").decode("utf-8")
    try:
        return sanitize_html(_markdown.render(text, {}))
    except Exception:
        # A bug in a parser must not hide the reply: show it as plain text. The reply itself
        # is content, so it is not logged.
        logger.exception("markdown rendering failed; the reply is shown as plain text")
        return "<pre>" + html.escape(text, quote=False) + "</pre>"


def _declarations(style: StyleMeta, token_type: _TokenType) -> str:
    """The CSS declarations for one token type, complete so no other style's rule leaks in."""
    spec = style.style_for_token(token_type)
    parts = [f"color: #{spec['color']}" if spec["color"] else "color: inherit"]
    if spec["bgcolor"]:
        parts.append(f"background-color: #{spec['bgcolor']}")
    parts.append("font-weight: bold" if spec["bold"] else "font-weight: normal")
    parts.append("font-style: italic" if spec["italic"] else "font-style: normal")
    parts.append("text-decoration: underline" if spec["underline"] else "text-decoration: none")
    return "; ".join(parts)


def _style_rules(style_name: str, default_text_color: str) -> list[str]:
    style = get_style_by_name(style_name)
    text_spec = style.style_for_token(PygmentsToken)
    text_color = f"#{text_spec['color']}" if text_spec["color"] else default_text_color
    rules = [
        f".{HIGHLIGHT_CLASS} {{ background-color: {style.background_color}; color: {text_color}; }}"
    ]
    for token_type, css_class in sorted(STANDARD_TYPES.items(), key=lambda item: item[1]):
        if css_class:
            rules.append(
                f".{HIGHLIGHT_CLASS} .{css_class} {{ {_declarations(style, token_type)}; }}"
            )
    return rules


@lru_cache(maxsize=1)
def pygments_css() -> str:
    """The stylesheet for highlighted code: light by default, dark when the system is dark."""
    light = _style_rules(LIGHT_STYLE, "#1f2328")
    dark = _style_rules(DARK_STYLE, "#f8f8f2")
    return (
        f"/* Code highlighting: Pygments '{LIGHT_STYLE}' (light), '{DARK_STYLE}' (dark). */\n"
        + "\n".join(light)
        + "\n@media (prefers-color-scheme: dark) {\n"
        + "\n".join("  " + rule for rule in dark)
        + "\n}\n"
    )
