"""Markdown → MJML blocks and → the text part: each construct, on purpose."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.content import colors, markup, plaintext

ACCENT = "#2563eb"


def mjml(body: str, **options: bool) -> str:
    return markup.to_mjml(body, accent_color=ACCENT, **options)


# --- MJML -----------------------------------------------------------------------------------------


def test_an_image_width_in_braces_sets_the_mj_image_width_and_leaves_no_trace() -> None:
    source = mjml("![An icon](https://cdn.example.com/icon.png){width=64}\n\n"
                  "![A chart](https://cdn.example.com/chart.png)\n")
    text = plaintext.to_text("![An icon](https://cdn.example.com/icon.png){width=64}\n")

    icon, chart = re.findall(r"<mj-image [^>]*>", source)
    assert 'width="64px"' in icon and "fluid-on-mobile" not in icon
    assert "width=" not in chart and 'fluid-on-mobile="true"' in chart
    assert "{width" not in source and "{width" not in text


def test_an_inline_image_keeps_its_width_and_never_grows_past_the_column() -> None:
    source = mjml('Badge ![build passing](https://cdn.example.com/b.png){ width="120px" } ok\n')

    image = re.search(r"<img [^>]*>", source)

    assert image is not None
    assert 'width="120"' in image[0] and 'alt="build passing"' in image[0]
    assert "max-width:100%;height:auto" in image[0]
    assert "</mj-text>" in source and " ok</p>" in source


def test_raw_html_images_are_held_to_the_column_whatever_their_width() -> None:
    source = mjml('<img src="https://cdn.example.com/w.png" width="2000" alt="Wide" '
                  'style="width:2000px">\n')

    image = re.search(r"<img [^>]*>", source)

    assert image is not None and 'width="2000"' in image[0]
    assert 'style="max-width:100%;height:auto;border:0"' in image[0]


def test_tables_scroll_in_their_own_box_and_keep_whole_words() -> None:
    source = mjml("| a | b |\n|---|--:|\n| 1 | 2 |\n")

    assert '<div style="overflow-x:auto;width:0;min-width:100%"><table style="' in source
    assert "word-break:normal" in source
    assert re.search(r'<td style="[^"]*text-align:right">2</td>', source)


def test_nested_lists_sit_close_to_their_item_and_top_lists_keep_their_margin() -> None:
    source = mjml("- one\n  - inner\n- two\n\n1. first\n")

    outer, inner, ordered = re.findall(r'<(?:ul|ol) style="([^"]*)"', source)

    assert outer.startswith("margin:0 0 16px") and ordered.startswith("margin:0 0 16px")
    assert inner.startswith("margin:4px 0 0")


def test_code_blocks_keep_lines_and_wrap_instead_of_widening_the_email() -> None:
    source = mjml("```js\nconst a = 1;\n  if (a < 2) { go(); }\n```\n")

    code = re.search(r'<pre style="([^"]*)"><code>(.*?)</code></pre>', source, re.S)

    assert code is not None
    assert code[2] == "const a = 1;\n  if (a &lt; 2) { go(); }"
    assert "white-space:pre-wrap" in code[1] and "overflow-wrap:anywhere" in code[1]


def test_every_heading_level_quote_and_rule_gets_inline_styles() -> None:
    source = mjml("".join(f"{'#' * n} H{n}\n\n" for n in range(1, 7))
                  + "> quoted\n\n- a\n\n  ---\n\n---\n")

    for n in range(1, 7):
        assert re.search(rf'<h{n} style="[^"]*font-weight:700">H{n}</h{n}>', source)
    assert re.search(r'<blockquote style="[^"]*border-left:4px solid', source)
    assert '<hr style="' in source  # a rule inside a list stays in the text block
    assert source.rstrip().endswith('<mj-divider css-class="mailer-divider" />')


# --- text part ------------------------------------------------------------------------------------


def test_long_code_lines_break_with_a_marker_but_a_line_with_a_url_stays_whole() -> None:
    url_line = "curl -sSL https://example.com/" + "very/" * 20 + "install.sh | sh"
    code = "    x = compute(" + ", ".join(f"argument_{n}" for n in range(12)) + ")"

    text = plaintext.to_text(f"```\n{code}\n{url_line}\n```\n")

    lines = text.splitlines()
    assert f"    {url_line}" in lines
    broken = [line for line in lines if "://" not in line]
    assert len(broken) > 1 and all(len(line) <= 78 for line in broken)
    assert broken[0].endswith(" \N{LEFTWARDS ARROW WITH HOOK}")
    assert broken[1].startswith("        argument_")  # continued at the line's own indent


def test_raw_html_links_and_images_are_kept_in_the_text_part() -> None:
    text = plaintext.to_text(
        'See <a href="https://example.com/raw">the raw link</a> and '
        '<a href="javascript:evil()">this</a>.\n\n'
        '<div><img src="https://cdn.example.com/pic.png" alt="A picture"></div>\n')

    assert "See the raw link [1] and this." in text
    assert "[image: A picture] https://cdn.example.com/pic.png" in text
    assert "javascript" not in text
    assert text.endswith("[1] https://example.com/raw")


def test_words_longer_than_a_line_are_broken_but_urls_never_are() -> None:
    word = "q" * 100
    url = "https://example.com/" + "y" * 100

    lines = plaintext.wrap(f"start {word} middle {url} end")

    assert url in lines
    assert all(len(line) <= plaintext.TEXT_WIDTH for line in lines if line != url)
    assert "".join(lines).count("q") == 100


MARKDOWNISH = st.text(alphabet="ab cd\n>-*#|`[]()!:/.1", max_size=400)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(MARKDOWNISH, st.sampled_from(
    ["https://example.com/" + "p" * 90, "y" * 120, "\n\n```\n" + "z " * 60 + "\n```\n"])),
    max_size=6))
def test_no_text_line_is_longer_than_78_unless_it_holds_a_url(parts: list[str]) -> None:
    text = plaintext.to_text(" ".join(parts))

    assert [line for line in text.splitlines() if len(line) > 78 and "://" not in line] == []


# --- colours --------------------------------------------------------------------------------------


def test_a_light_accent_is_darkened_for_text_and_lightened_for_dark_mode() -> None:
    palette = colors.palette("#FDE047")

    assert palette.accent == "#fde047"
    assert colors.contrast(palette.text, colors.CARD) >= colors.READABLE
    assert colors.contrast(palette.dark_text, colors.DARK_CARD) >= colors.READABLE
    assert palette.on_accent == "#111827"  # dark text on a yellow button
    assert colors.palette("#2563eb").text == "#2563eb"  # readable already: unchanged
    assert colors.palette("#123").on_accent == "#ffffff"
