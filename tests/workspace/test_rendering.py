"""Assistant replies rendered to HTML: ordinary Markdown renders, hostile input comes out inert.

Two defences are tested separately, so each test fails if its own defence goes: markdown-it
with raw HTML off (hostile markup is shown as text), and the nh3 sanitiser (hostile markup
that reaches it is removed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domicile.workspace import rendering
from domicile.workspace.rendering import (
    ALLOWED_TAGS,
    ALLOWED_URL_SCHEMES,
    HIGHLIGHT_BUDGET_CHARS,
    LINK_REL,
    pygments_css,
    render_markdown,
    sanitize_html,
)


@dataclass
class ParsedHtml:
    """What a browser would build from the fragment: elements with attributes, and text."""

    elements: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    text: str = ""

    def tags(self) -> set[str]:
        return {tag for tag, _ in self.elements}

    def find(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.elements if name == tag]


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parsed = ParsedHtml()
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.parsed.elements.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.parsed.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self._text.append(data)


def parse(fragment: str) -> ParsedHtml:
    collector = _Collector()
    collector.feed(fragment)
    collector.close()
    collector.parsed.text = "".join(collector._text)
    return collector.parsed


def assert_inert(fragment: str) -> ParsedHtml:
    """No element, attribute or URL in ``fragment`` can run script or load anything."""
    parsed = parse(fragment)
    assert parsed.tags() <= ALLOWED_TAGS, parsed.tags() - ALLOWED_TAGS
    assert "<script" not in fragment.lower()
    for tag, attrs in parsed.elements:
        assert set(attrs) <= {"href", "title", "rel", "class"}, (tag, attrs)
        assert not any(name.startswith("on") for name in attrs)
        if "href" in attrs:
            assert tag == "a"
            href = (attrs["href"] or "").strip().lower()
            assert href.split(":", 1)[0] in ALLOWED_URL_SCHEMES, href
        if "class" in attrs:
            assert tag in {"span", "div"}, (tag, attrs)
    return parsed


def render(markdown: str) -> ParsedHtml:
    return assert_inert(render_markdown(markdown))


# ---- ordinary Markdown renders -------------------------------------------------------------

ORDINARY_REPLY = """\
# Data residency

## How it works

Content is **sealed** before it is *written*, and ~~never~~ rarely re-read.
Call `seal()` first; see [the docs](https://example.org/docs "Docs") or
[mail us](mailto:team@example.org).

- first point
- second point

1. one
2. two

> quoted

| Region | Store |
|--------|-------|
| eu     | sqlite |

```python
def seal(content: bytes) -> bytes:
    return content
```
"""


@pytest.fixture(scope="module")
def ordinary() -> ParsedHtml:
    return render(ORDINARY_REPLY)


def test_headings_emphasis_and_inline_code_render(ordinary: ParsedHtml) -> None:
    assert {"h1", "h2", "strong", "em", "del", "code", "blockquote"} <= ordinary.tags()
    assert "Data residency" in ordinary.text
    assert "seal()" in ordinary.text


def test_lists_and_tables_render(ordinary: ParsedHtml) -> None:
    assert {"ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td"} <= ordinary.tags()
    assert "Region" in ordinary.text and "sqlite" in ordinary.text


def test_links_keep_their_address_and_get_a_safe_rel(ordinary: ParsedHtml) -> None:
    links = ordinary.find("a")
    assert [link["href"] for link in links] == [
        "https://example.org/docs",
        "mailto:team@example.org",
    ]
    assert links[0]["title"] == "Docs"
    assert all(link["rel"] == LINK_REL for link in links)


def test_fenced_python_is_highlighted_with_pygments_classes(ordinary: ParsedHtml) -> None:
    assert {"class": "highlight"} in ordinary.find("div")
    span_classes = {attrs.get("class") for attrs in ordinary.find("span")}
    assert {"k", "nf"} <= span_classes  # `def` is a keyword, `seal` a function name
    assert "def seal(content: bytes) -> bytes:" in ordinary.text


def test_highlighting_uses_classes_never_inline_styles() -> None:
    html = render_markdown("```js\nconst x = 1;\n```")
    assert 'class="highlight"' in html
    assert "style=" not in html


def test_unknown_fence_language_shows_plain_code() -> None:
    parsed = render("```no-such-language\na < b\n```")
    assert {"pre", "code"} <= parsed.tags()
    assert parsed.find("span") == []
    assert "a < b" in parsed.text


# ---- hostile replies come out inert --------------------------------------------------------


def test_script_tag_is_shown_as_text_not_run() -> None:
    parsed = render("Look: <script>alert(1)</script>")
    # Raw HTML is off, so the user sees what the model wrote instead of it vanishing.
    assert "<script>alert(1)</script>" in parsed.text
    assert "script" not in parsed.tags()


def test_sanitiser_removes_a_script_and_its_content() -> None:
    assert sanitize_html("<p>hi<script>alert(1)</script></p>") == "<p>hi</p>"


def test_img_with_onerror_is_shown_as_text() -> None:
    parsed = render("<img src=x onerror=alert(1)>")
    assert "img" not in parsed.tags()
    assert "<img src=x onerror=alert(1)>" in parsed.text


@pytest.mark.parametrize(
    "fragment",
    [
        "<img src=x onerror=alert(1)>",
        '<p onclick="alert(1)">x</p>',
        '<a href="https://example.org" onmouseover="alert(1)">x</a>',
        '<svg onload="alert(1)"></svg>',
        '<iframe src="https://evil.example"></iframe>',
        '<p style="background:url(https://evil.example)">x</p>',
    ],
)
def test_sanitiser_drops_event_attributes_and_foreign_elements(fragment: str) -> None:
    cleaned = sanitize_html(fragment)
    assert_inert(cleaned)
    assert "alert" not in cleaned and "evil" not in cleaned


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "vbscript:msgbox(1)",
        "data:text/html,<script>alert(1)</script>",
        "file:///etc/passwd",
    ],
)
def test_markdown_links_to_unsafe_schemes_lose_their_address(url: str) -> None:
    parsed = render(f"[click](<{url}>) and [again]({url})")
    assert all("href" not in attrs for attrs in parsed.find("a"))


@pytest.mark.parametrize(
    "href",
    [
        "javascript:alert(1)",
        " javascript:alert(1)",
        "java&#x09;script:alert(1)",
        "data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;",
        "vbscript:msgbox(1)",
        "/workspace/logout",
        "//evil.example/path",
    ],
)
def test_sanitiser_keeps_only_absolute_http_https_mailto_links(href: str) -> None:
    cleaned = sanitize_html(f'<a href="{href}">x</a>')
    assert parse(cleaned).find("a") == [{"rel": LINK_REL}]


def test_raw_data_link_is_shown_as_text() -> None:
    parsed = render('<a href="data:text/html,<script>alert(1)</script>">x</a>')
    assert parsed.find("a") == []
    assert '<a href="data:text/html,' in parsed.text


@pytest.mark.parametrize(
    "info",
    ['"onmouseover=alert(1)', 'python" onmouseover="alert(1)', "x' onmouseover='alert(1)"],
)
def test_code_fence_language_cannot_inject_attributes(info: str) -> None:
    parsed = render(f"```{info}\nprint(1)\n```")
    assert "print(1)" in parsed.text
    assert all("onmouseover" not in str(attrs) for _, attrs in parsed.elements)


def test_sanitiser_keeps_only_known_highlight_classes() -> None:
    cleaned = sanitize_html(
        '<div class="highlight evil"><pre><code class="language-x">'
        '<span class="k modal-open">def</span></code></pre></div>'
    )
    assert (
        cleaned == '<div class="highlight"><pre><code><span class="k">def</span></code></pre></div>'
    )


def test_html_in_a_table_cell_is_shown_as_text() -> None:
    parsed = render("| a | b |\n|---|---|\n| <img src=x onerror=alert(1)> | <b>x</b> |")
    assert "td" in parsed.tags()
    assert "img" not in parsed.tags() and "b" not in parsed.tags()
    assert "<img src=x onerror=alert(1)>" in parsed.text


def test_images_become_links_so_a_reply_never_loads_one() -> None:
    parsed = render("![a cat](https://example.org/cat.png) ![x](javascript:alert(1))")
    assert "img" not in parsed.tags()
    assert parsed.find("a")[0]["href"] == "https://example.org/cat.png"
    assert "a cat" in parsed.text


def test_comments_are_dropped_by_the_sanitiser() -> None:
    assert sanitize_html("<p>a<!-- <script>alert(1)</script> -->b</p>") == "<p>ab</p>"


# ---- robustness and cost -------------------------------------------------------------------

HOSTILE_INPUTS = [
    "",
    "\x00\x00<\x00script>",
    "\ud800 lone surrogate \udfff",
    "> " * 5_000 + "deep",
    "- " * 5_000 + "deep",
    "[" * 10_000,
    "*" * 10_000 + "a",
    "`" * 10_000,
    "|" * 10_000 + "\n" + "|-" * 5_000,
    "```" + "python\n" * 3_000,
    "&#0; &#xD800; &#x110000; &nbsp; &bogus;",
    "[a]: javascript:alert(1)\n\n[a]",
    "<" * 5_000 + ">" * 5_000,
]


@pytest.mark.parametrize("text", HOSTILE_INPUTS, ids=range(len(HOSTILE_INPUTS)))
def test_hostile_input_renders_without_raising(text: str) -> None:
    assert isinstance(render(text).text, str)


def test_lone_surrogates_are_replaced_not_dropped() -> None:
    assert "before" in render("before \ud800 after").text


_MARKDOWNISH = st.text(
    alphabet=st.sampled_from(list("<>[]()!`*_~|#-=:/\"' \n\tajvscriptonerorhfimgdat1\\&;"))
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), _MARKDOWNISH))
def test_any_text_renders_to_inert_html(text: str) -> None:
    render(text)


def test_a_parser_failure_shows_the_reply_as_escaped_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: object) -> str:
        raise RecursionError("parser bug")

    monkeypatch.setattr(rendering._markdown, "render", broken)
    assert render_markdown("<b>x</b>") == "<pre>&lt;b&gt;x&lt;/b&gt;</pre>"


def test_highlighting_stops_at_the_budget_and_later_code_stays_plain() -> None:
    block = "```python\n" + "x = 1\n" * 200 + "```\n\n"  # 1,200 characters of code
    blocks = HIGHLIGHT_BUDGET_CHARS // 1_200 + 3
    html = render_markdown(block * blocks)
    highlighted = html.count('<div class="highlight">')
    assert 0 < highlighted < blocks
    assert html.count("<pre>") == blocks  # every block is still shown


# ---- stylesheet ----------------------------------------------------------------------------


def _relative_luminance(hex_color: str) -> float:
    hex_color = hex_color.lstrip("#")
    if len(hex_color) == 3:
        hex_color = "".join(c * 2 for c in hex_color)
    channels = [int(hex_color[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_relative_luminance(a), _relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _rules(css: str) -> dict[str, str]:
    return dict(re.findall(r"(\.highlight[^{]*?)\s*\{([^}]*)\}", css))


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_token_colour_meets_wcag_aa_contrast(scheme: str) -> None:
    light_css, dark_css = pygments_css().split("@media (prefers-color-scheme: dark)")
    rules = _rules(light_css if scheme == "light" else dark_css)
    page_background = re.search(r"background-color: (#\w+)", rules[".highlight"])
    assert page_background is not None
    contrasts = []
    for declarations in rules.values():
        colour = re.search(r"(?<!background-)color: (#\w+)", declarations)
        own_background = re.search(r"background-color: (#\w+)", declarations)
        if colour:
            background = own_background or page_background
            contrasts.append(_contrast(colour.group(1), background.group(1)))
    assert len(contrasts) > 20
    assert min(contrasts) >= 4.5


def test_stylesheet_styles_every_token_class_in_both_schemes() -> None:
    light_css, dark_css = pygments_css().split("@media (prefers-color-scheme: dark)")
    for css in (light_css, dark_css):
        assert {".highlight .k", ".highlight .nf", ".highlight .s2"} <= set(_rules(css))
        assert len(_rules(css)) == len(_rules(light_css))
    assert "url(" not in pygments_css()
