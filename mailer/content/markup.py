"""Issue Markdown → MJML body blocks: every construct mapped to markup email clients render.

The plain-text part is written from the same parse by `mailer.content.plaintext`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.tree import SyntaxTreeNode
from markdown_it.utils import EnvType, OptionsDict

_MONO = "ui-monospace,SFMono-Regular,Menlo,Consolas,monospace"
_HEADING_SIZES = {"h1": "26px", "h2": "22px", "h3": "19px"}
_STYLES = {
    "p": "margin:0 0 16px",
    "ul": "margin:0 0 16px;padding-left:24px",
    "ol": "margin:0 0 16px;padding-left:24px",
    "li": "margin:0 0 4px",
    "blockquote": "margin:0 0 16px;padding:2px 0 2px 16px;border-left:4px solid #d1d5db;"
    "color:#4b5563",
    # Words stay whole in a table: a wide one scrolls in its box (see _render_table).
    "table": "border-collapse:collapse;width:100%;margin:0 0 16px;font-size:15px;line-height:1.4;"
    "word-break:normal;overflow-wrap:normal",
    "th": "border:1px solid #d1d5db;padding:6px 10px;text-align:left;font-weight:600;"
    "background-color:#f3f4f6",
    "td": "border:1px solid #d1d5db;padding:6px 10px;text-align:left;vertical-align:top",
    "img": "max-width:100%;height:auto;border:0",
    "code": f"padding:1px 4px;border-radius:4px;background-color:#f3f4f6;font-family:{_MONO};"
    "font-size:0.9em",
    # pre-wrap + break-word: long lines wrap instead of widening the email on phones,
    # and every line break of the code survives.
    "pre": f"margin:0 0 16px;padding:12px 14px;border-radius:6px;background-color:#f3f4f6;"
    f"font-family:{_MONO};font-size:14px;line-height:1.45;white-space:pre-wrap;"
    "word-break:break-word;overflow-wrap:anywhere;overflow-x:auto",
    "hr": "border:0;border-top:1px solid #e5e7eb;margin:24px 0",
}

# What raw HTML in an issue may keep when the newsletter does not allow HTML. The chunk that
# holds it is cleaned as a whole, so our own inline styles have to survive the cleaning too.
_SAFE_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "div", "dl", "dt", "em",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol",
    "p", "pre", "s", "small", "span", "strong", "sub", "sup", "table", "tbody", "td",
    "tfoot", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
_SAFE_ATTRIBUTES = {
    "*": {"style", "title"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
    "ol": {"start"},
}
_SAFE_STYLE_PROPERTIES = {
    "background-color", "border", "border-collapse", "border-left", "border-radius",
    "border-top", "color", "font-family", "font-size", "font-style", "font-weight", "height",
    "line-height", "margin", "max-width", "min-width", "overflow-wrap", "overflow-x", "padding",
    "padding-left", "text-align", "text-decoration", "vertical-align", "white-space", "width",
    "word-break",
}  # fmt: skip

# Whatever raw HTML brings, an image may never be wider than the column.
_FORCED_ATTRIBUTES = {"img": {"style": _STYLES["img"]}}

_LIST_OPEN = ("bullet_list_open", "ordered_list_open")
_OWN_RULES = ("fence", "code_block", "hr")  # rendered by the rules below, styles included
# `![alt](src){width=300}` (Pandoc's and kramdown's spelling): the width in CSS pixels.
_IMAGE_WIDTH = re.compile(r"""\{\s*width\s*=\s*["']?(\d{1,4})(?:px)?["']?\s*\}""")

_md = MarkdownIt("commonmark").enable("table")


def _image_widths(state: StateCore) -> None:
    """Move a `{width=N}` that follows an image into the image's width attribute."""
    for block in state.tokens:
        for image, after in zip(block.children or [], (block.children or [])[1:], strict=False):
            match = _IMAGE_WIDTH.match(after.content) if after.type == "text" else None
            if image.type == "image" and match:
                image.attrSet("width", str(int(match[1])))
                after.content = after.content[match.end():]


_md.core.ruler.push("image_width", _image_widths)


def parse(markdown: str) -> SyntaxTreeNode:
    """Parse issue Markdown (CommonMark + tables) into a syntax tree."""
    return SyntaxTreeNode(_md.parse(markdown))


def leading_heading(markdown: str) -> str | None:
    """The text of the body's first block when that block is a heading, else None."""
    tree = parse(markdown)
    if tree.children and tree.children[0].type == "heading":
        return inline_text(tree.children[0].children[0])
    return None


# --- MJML -----------------------------------------------------------------------------------


def to_mjml(markdown: str, *, accent_color: str, allow_html: bool = False) -> str:
    """Convert issue Markdown to MJML column content: mj-text, mj-image and mj-divider blocks.

    Runs of text blocks share one mj-text; a paragraph made only of (linked) images becomes
    mj-image blocks and a top-level rule an mj-divider. Raw HTML is cleaned with nh3 unless
    `allow_html`.
    """
    tokens = _md.parse(markdown)
    _add_styles(tokens, accent_color)
    if tokens and tokens[0].type == "heading_open":
        # The card already has its padding; a leading heading's top margin would double it.
        tokens[0].attrSet("style", str(tokens[0].attrGet("style")).replace("24px", "0", 1))
    blocks: list[str] = []
    pending: list[SyntaxTreeNode] = []

    def flush() -> None:
        if pending:
            blocks.append(_mj_text(pending, allow_html=allow_html))
            pending.clear()

    for node in SyntaxTreeNode(tokens).children:
        images = standalone_images(node)
        if images:
            flush()
            blocks.extend(_mj_image(image, link) for image, link in images)
        elif node.type == "hr":
            flush()
            blocks.append('<mj-divider css-class="mailer-divider" />')
        else:
            pending.append(node)
    flush()
    return "\n".join(blocks)


def _add_styles(tokens: Sequence[Token], accent_color: str) -> None:
    """Inline the styles: many mail clients drop <style> blocks or ignore their selectors."""
    quotes = lists = 0
    for token in tokens:
        if token.children:
            _add_styles(token.children, accent_color)
        quotes += {"blockquote_open": 1, "blockquote_close": -1}.get(token.type, 0)
        nested_list = lists > 0 and token.type in _LIST_OPEN
        lists += token.nesting if token.tag in ("ul", "ol") else 0
        if token.type == "link_open":
            style = f"color:{accent_color};text-decoration:underline"
        elif token.type == "heading_open":
            size = _HEADING_SIZES.get(token.tag, "17px")
            style = f"margin:24px 0 12px;font-size:{size};line-height:1.3;font-weight:700"
        elif token.type == "paragraph_open" and quotes:
            style = "margin:8px 0"
        elif nested_list:
            style = _STYLES[token.tag].replace("margin:0 0 16px", "margin:4px 0 0")
        elif token.nesting != -1 and token.tag in _STYLES and token.type not in _OWN_RULES:
            style = _STYLES[token.tag]
        else:
            continue
        # markdown-it puts column alignment in style already; appended last, it still wins.
        existing = token.attrGet("style")
        token.attrSet("style", f"{style};{existing}" if existing else style)


def _render_code(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    code = escapeHtml(tokens[idx].content.removesuffix("\n"))
    return f'<pre style="{_STYLES["pre"]}"><code>{code}</code></pre>\n'


def _render_table(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    # A wide table scrolls inside its box instead of pushing the whole email off-screen.
    # width:0 + min-width:100% keeps the table's width out of the column's own sizing, which
    # would otherwise grow past a phone's screen (and be cut off by the rounded card).
    tag = self.renderToken(tokens, idx, options, env)
    box = '<div style="overflow-x:auto;width:0;min-width:100%">'
    return box + tag if tokens[idx].nesting == 1 else tag + "</div>\n"


def _render_hr(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    return f'<hr style="{_STYLES["hr"]}" />\n'


for _name, _rule in [("fence", _render_code), ("code_block", _render_code), ("hr", _render_hr),
                     ("table_open", _render_table), ("table_close", _render_table)]:
    _md.add_render_rule(_name, _rule)


def _mj_text(nodes: Sequence[SyntaxTreeNode], *, allow_html: bool) -> str:
    tokens = [token for node in nodes for token in node.to_tokens()]
    body = _md.renderer.render(tokens, _md.options, {})
    if not allow_html and _has_raw_html(tokens):
        body = nh3.clean(
            body,
            tags=_SAFE_TAGS,
            attributes=_SAFE_ATTRIBUTES,
            url_schemes={"http", "https", "mailto"},
            filter_style_properties=_SAFE_STYLE_PROPERTIES,
            set_tag_attribute_values=_FORCED_ATTRIBUTES,
        )
    return f'<mj-text css-class="mailer-text">\n{body.strip()}\n</mj-text>'


def _has_raw_html(tokens: Sequence[Token]) -> bool:
    return any(
        token.type in ("html_block", "html_inline")
        or (token.children is not None and _has_raw_html(token.children))
        for token in tokens
    )


def standalone_images(
    node: SyntaxTreeNode,
) -> list[tuple[SyntaxTreeNode, SyntaxTreeNode | None]]:
    """(image, enclosing link or None) for a paragraph holding nothing but images, else []."""
    if node.type != "paragraph" or not node.children:
        return []
    images: list[tuple[SyntaxTreeNode, SyntaxTreeNode | None]] = []
    for child in node.children[0].children:
        if is_blank(child):
            continue
        if child.type == "image":
            images.append((child, None))
            continue
        parts = [c for c in child.children if not is_blank(c)] if child.type == "link" else []
        if len(parts) != 1 or parts[0].type != "image":
            return []
        images.append((parts[0], child))
    return images


def is_blank(node: SyntaxTreeNode) -> bool:
    """Whitespace between inline parts: a line break or blank text."""
    return node.type == "softbreak" or (node.type == "text" and not node.content.strip())


def _mj_image(image: SyntaxTreeNode, link: SyntaxTreeNode | None) -> str:
    # As wide as the column and scaled down on phones (fluid-on-mobile), or `{width=N}`
    # pixels wide: mj-image never makes an image wider than the column.
    width = image.attrs.get("width")
    attrs = {"src": image.attrs.get("src", ""), "alt": inline_text(image),
             "title": image.attrs.get("title"), "width": f"{width}px" if width else None,
             "fluid-on-mobile": None if width else "true",
             "css-class": "mailer-image"}  # fmt: skip
    if link is not None:
        attrs.update(href=link.attrs.get("href", ""), rel="noopener")
    rendered = " ".join(f'{name}="{html.escape(str(value))}"'
                        for name, value in attrs.items() if value is not None)  # fmt: skip
    return f"<mj-image {rendered} />"


def inline_text(node: SyntaxTreeNode) -> str:
    """The text of an inline node, markup dropped (alt text, heading text)."""
    if node.type in ("text", "code_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return " "
    return "".join(inline_text(child) for child in node.children)
