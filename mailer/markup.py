"""Issue Markdown → MJML body blocks and → plain text, from one markdown-it-py parse."""

from __future__ import annotations

import html
import re
import textwrap
from collections.abc import Sequence

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.tree import SyntaxTreeNode
from markdown_it.utils import EnvType, OptionsDict

TEXT_WIDTH = 72

_MONO = "ui-monospace,SFMono-Regular,Menlo,Consolas,monospace"
_HEADING_SIZES = {"h1": "26px", "h2": "22px", "h3": "19px"}
_STYLES = {
    "p": "margin:0 0 16px",
    "ul": "margin:0 0 16px;padding-left:24px",
    "ol": "margin:0 0 16px;padding-left:24px",
    "li": "margin:0 0 4px",
    "blockquote": "margin:0 0 16px;padding:2px 0 2px 16px;border-left:4px solid #d1d5db;"
    "color:#4b5563",
    "table": "border-collapse:collapse;width:100%;margin:0 0 16px;font-size:15px;line-height:1.4",
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
    "line-height", "margin", "max-width", "overflow-wrap", "overflow-x", "padding",
    "padding-left", "text-align", "text-decoration", "vertical-align", "white-space", "width",
    "word-break",
}  # fmt: skip

_OWN_RULES = ("fence", "code_block", "hr")  # rendered by the rules below, styles included
_SCRIPT_TAG = re.compile(r"<(/?)(?:script|style)\b", re.IGNORECASE)

_md = MarkdownIt("commonmark").enable("table")


def parse(markdown: str) -> SyntaxTreeNode:
    """Parse issue Markdown (CommonMark + tables) into a syntax tree."""
    return SyntaxTreeNode(_md.parse(markdown))


def leading_heading(markdown: str) -> str | None:
    """The text of the body's first block when that block is a heading, else None."""
    tree = parse(markdown)
    if tree.children and tree.children[0].type == "heading":
        return _plain(tree.children[0].children[0])
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
        images = _standalone_images(node)
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
    quotes = 0
    for token in tokens:
        if token.children:
            _add_styles(token.children, accent_color)
        quotes += {"blockquote_open": 1, "blockquote_close": -1}.get(token.type, 0)
        if token.type == "link_open":
            style = f"color:{accent_color};text-decoration:underline"
        elif token.type == "heading_open":
            size = _HEADING_SIZES.get(token.tag, "17px")
            style = f"margin:24px 0 12px;font-size:{size};line-height:1.3;font-weight:700"
        elif token.type == "paragraph_open" and quotes:
            style = "margin:8px 0"
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
    tag = self.renderToken(tokens, idx, options, env)
    return '<div style="overflow-x:auto">' + tag if tokens[idx].nesting == 1 else tag + "</div>\n"


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
        )
    return f'<mj-text css-class="mailer-text">\n{body.strip()}\n</mj-text>'


def _has_raw_html(tokens: Sequence[Token]) -> bool:
    return any(
        token.type in ("html_block", "html_inline")
        or (token.children is not None and _has_raw_html(token.children))
        for token in tokens
    )


def _standalone_images(
    node: SyntaxTreeNode,
) -> list[tuple[SyntaxTreeNode, SyntaxTreeNode | None]]:
    """(image, enclosing link or None) for a paragraph holding nothing but images, else []."""
    if node.type != "paragraph" or not node.children:
        return []
    images: list[tuple[SyntaxTreeNode, SyntaxTreeNode | None]] = []
    for child in node.children[0].children:
        if _is_blank(child):
            continue
        if child.type == "image":
            images.append((child, None))
            continue
        parts = [c for c in child.children if not _is_blank(c)] if child.type == "link" else []
        if len(parts) != 1 or parts[0].type != "image":
            return []
        images.append((parts[0], child))
    return images


def _is_blank(node: SyntaxTreeNode) -> bool:
    return node.type == "softbreak" or (node.type == "text" and not node.content.strip())


def _mj_image(image: SyntaxTreeNode, link: SyntaxTreeNode | None) -> str:
    # mj-image is fluid: width 100% of the column, capped at the image's column width.
    attrs = {"src": image.attrs.get("src", ""), "alt": _plain(image),
             "title": image.attrs.get("title"), "fluid-on-mobile": "true",
             "css-class": "mailer-image"}  # fmt: skip
    if link is not None:
        attrs.update(href=link.attrs.get("href", ""), rel="noopener")
    rendered = " ".join(f'{name}="{html.escape(str(value))}"'
                        for name, value in attrs.items() if value is not None)  # fmt: skip
    return f"<mj-image {rendered} />"


def _plain(node: SyntaxTreeNode) -> str:
    """The text of an inline node, markup dropped (alt text, heading text)."""
    if node.type in ("text", "code_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return " "
    return "".join(_plain(child) for child in node.children)


# --- plain text -----------------------------------------------------------------------------


def to_text(markdown: str, *, width: int = TEXT_WIDTH) -> str:
    """Convert issue Markdown to readable plain text; links become numbered references.

    Paragraphs wrap at `width` (URLs are never broken), headings are underlined, code
    blocks are kept verbatim and indented, and the link references close the text.
    """
    tree = parse(markdown)
    writer = _TextWriter(top_level=min(_heading_levels(tree), default=1))
    text = writer.blocks(tree.children, width)
    if writer.links:
        text += "\n\n" + "\n".join(f"[{n}] {url}" for n, url in enumerate(writer.links, 1))
    return text


def _heading_levels(node: SyntaxTreeNode) -> list[int]:
    levels = [int(node.tag[1])] if node.type == "heading" else []
    for child in node.children:
        levels.extend(_heading_levels(child))
    return levels


class _TextWriter:
    """Walks the syntax tree once, numbering links in reading order."""

    def __init__(self, *, top_level: int) -> None:
        # The shallowest heading of the issue gets "=", so an issue written with ## and ###
        # reads like one written with # and ##.
        self.top_level = top_level
        self.links: list[str] = []

    def blocks(self, nodes: Sequence[SyntaxTreeNode], width: int, *, tight: bool = False) -> str:
        rendered = (self.block(node, width) for node in nodes)
        return ("\n" if tight else "\n\n").join(part for part in rendered if part)

    def block(self, node: SyntaxTreeNode, width: int) -> str:
        kind = node.type
        if kind == "paragraph":
            images = _standalone_images(node)
            if images:
                return "\n".join(self.image(image, link) for image, link in images)
            return "\n".join(_wrap(self.inlines(node.children[0].children), width))
        if kind == "heading":
            lines = _wrap(" ".join(self.inlines(node.children[0].children).split()), width)
            mark = "=" if int(node.tag[1]) <= self.top_level else "-"
            return "\n".join([*lines, mark * max(map(len, lines))]).strip()
        if kind in ("bullet_list", "ordered_list"):
            return self.items(node, width)
        if kind == "blockquote":
            inner = self.blocks(node.children, max(width - 2, 20))
            return "\n".join(f"> {line}".rstrip() for line in inner.splitlines())
        if kind in ("fence", "code_block"):
            code = node.content.removesuffix("\n").expandtabs(4)
            return "\n".join(f"    {line}".rstrip() for line in code.splitlines())
        if kind == "table":
            return self.table(node, width)
        if kind == "hr":
            return "* * *"
        if kind == "html_block":
            return "\n".join(_wrap(" ".join(_strip_tags(node.content).split()), width))
        return self.blocks(node.children, width)

    def items(self, node: SyntaxTreeNode, width: int) -> str:
        start, count = int(node.attrs.get("start", 1)), len(node.children)
        ordered = node.type == "ordered_list"
        size = len(f"{start + count - 1}. ") if ordered else 2
        markers = [f"{start + i}. ".ljust(size) if ordered else "- " for i in range(count)]
        tight = all(p.hidden for item in node.children for p in item.children
                    if p.type == "paragraph")  # fmt: skip
        items = []
        for marker, item in zip(markers, node.children, strict=True):
            body = self.blocks(item.children, max(width - size, 20), tight=tight)
            lines = [marker + line if i == 0 else " " * size + line
                     for i, line in enumerate(body.splitlines() or [""])]  # fmt: skip
            items.append("\n".join(line.rstrip() for line in lines))
        return ("\n" if tight else "\n\n").join(items)

    def table(self, node: SyntaxTreeNode, width: int) -> str:
        rows = [[" ".join(self.inlines(cell.children[0].children).split()) if cell.children
                 else "" for cell in row.children]
                for section in node.children for row in section.children]  # fmt: skip
        right = ["right" in str(cell.attrs.get("style", ""))
                 for cell in node.children[0].children[0].children]  # fmt: skip
        sizes = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        if sum(sizes) + 3 * (len(sizes) - 1) > width:
            # Too wide to line up: one "column: value" group per row.
            return "\n\n".join(
                "\n".join(line for name, cell in zip(rows[0], row, strict=True)
                          for line in _wrap(f"{name}: {cell}", width))
                for row in rows[1:]
            )  # fmt: skip
        lines = [" | ".join(cell.rjust(size) if align else cell.ljust(size)
                            for cell, size, align in zip(row, sizes, right, strict=True)).rstrip()
                 for row in rows]  # fmt: skip
        return "\n".join([lines[0], "-+-".join("-" * size for size in sizes), *lines[1:]])

    def image(self, image: SyntaxTreeNode, link: SyntaxTreeNode | None) -> str:
        text = f"[image: {_plain(image)}] {image.attrs.get('src', '')}"
        return f"{text} {self.reference(str(link.attrs.get('href', '')))}" if link else text

    def reference(self, url: str) -> str:
        if url not in self.links:
            self.links.append(url)
        return f"[{self.links.index(url) + 1}]"

    def inlines(self, nodes: Sequence[SyntaxTreeNode]) -> str:
        parts: list[str] = []
        hidden = False
        for node in nodes:
            # Inline <script>/<style> arrive as separate tags around ordinary text: drop the
            # text in between too, as nh3 does for the HTML part.
            tag = _SCRIPT_TAG.match(node.content) if node.type == "html_inline" else None
            if tag:
                hidden = not tag.group(1)
            elif not hidden:
                parts.append(self.inline(node))
        return "".join(parts)

    def inline(self, node: SyntaxTreeNode) -> str:
        kind = node.type
        if kind == "text":
            return node.content
        if kind == "softbreak":
            return " "
        if kind == "hardbreak":
            return "\n"
        if kind == "code_inline":
            return f"`{node.content}`"
        if kind == "image":
            return self.image(node, None)
        if kind == "html_inline":
            return "\n" if re.fullmatch(r"<br\s*/?>", node.content, re.I) else ""
        inner = self.inlines(node.children)
        if kind == "strong":
            return f"*{inner}*"
        if kind == "em":
            return f"_{inner}_"
        if kind == "link":
            url = str(node.attrs.get("href", ""))
            # An autolink (or a link whose text is its address) needs no reference.
            if inner.strip() in (url, url.removeprefix("mailto:")):
                return inner
            return f"{inner} {self.reference(url)}"
        return inner


def _wrap(text: str, width: int) -> list[str]:
    # URLs and other long words stay whole: a broken URL cannot be clicked.
    lines: list[str] = []
    for part in text.split("\n"):
        lines.extend(
            textwrap.wrap(part, width=width, break_long_words=False, break_on_hyphens=False)
            or [""]
        )
    return lines


def _strip_tags(fragment: str) -> str:
    return html.unescape(nh3.clean(fragment, tags=set()))
