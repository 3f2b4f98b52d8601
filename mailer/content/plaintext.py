"""Issue Markdown → the text/plain part: readable at 72 columns, links as numbered references."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from html.parser import HTMLParser

from markdown_it.tree import SyntaxTreeNode

from mailer.content import fields
from mailer.content.markup import inline_text, parse, standalone_images

TEXT_WIDTH = 72

_SCRIPT_TAG = re.compile(r"<(/?)(?:script|style)\b", re.IGNORECASE)
_LINKABLE = re.compile(r"(?:https?:|mailto:)\S+", re.IGNORECASE)
_CONTINUED = " \N{LEFTWARDS ARROW WITH HOOK}"  # marks a code line broken to fit


def to_text(markdown: str, *, width: int = TEXT_WIDTH) -> str:
    """Convert issue Markdown to readable plain text; links become numbered references.

    Paragraphs wrap at `width` (URLs are never broken), headings are underlined, code
    blocks are kept indented (a line too long to fit is broken and marked with ↩), images
    read as their alt text and address, and the link references close the text.
    """
    tree = parse(markdown)
    writer = _TextWriter(top_level=min(_heading_levels(tree), default=1))
    text = writer.blocks(tree.children, width)
    if writer.links:
        text += "\n\n" + "\n".join(f"[{n}] {url}" for n, url in enumerate(writer.links, 1))
    return text


def wrap(text: str, width: int = TEXT_WIDTH) -> list[str]:
    """Lines of at most `width` characters; runs of spaces collapse. A URL is never broken
    (a broken URL cannot be clicked); any other word longer than a line is. A personal
    field's marker counts as long as a typical value and is never broken."""
    text, markers = fields.stand_ins(text)
    lines: list[str] = []
    for part in text.split("\n"):
        words = [piece for word in part.split() for piece in _pieces(word, width)]
        lines.extend(textwrap.wrap(" ".join(words), width=width, break_long_words=False,
                                   break_on_hyphens=False) or [""])  # fmt: skip
    return [fields.restore(line, markers) for line in lines]


def _pieces(word: str, width: int) -> list[str]:
    if len(word) <= width or "://" in word or fields.has_stand_in(word):
        return [word]
    return [word[i:i + width] for i in range(0, len(word), width)]


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
        self.open_links: list[str | None] = []  # hrefs of raw <a> tags not yet closed

    def blocks(self, nodes: Sequence[SyntaxTreeNode], width: int, *, tight: bool = False) -> str:
        rendered = (self.block(node, width) for node in nodes)
        return ("\n" if tight else "\n\n").join(part for part in rendered if part)

    def block(self, node: SyntaxTreeNode, width: int) -> str:
        kind = node.type
        if kind == "paragraph":
            images = standalone_images(node)
            if images:
                return "\n".join(self.image(image, link) for image, link in images)
            return "\n".join(wrap(self.inlines(node.children[0].children), width))
        if kind == "heading":
            lines = wrap(" ".join(self.inlines(node.children[0].children).split()), width)
            mark = "=" if int(node.tag[1]) <= self.top_level else "-"
            # Never longer than a line: a heading may be one long URL.
            return "\n".join([*lines, mark * min(max(map(len, lines)), width)]).strip()
        if kind in ("bullet_list", "ordered_list"):
            return self.items(node, width)
        if kind == "blockquote":
            inner = self.blocks(node.children, max(width - 2, 20))
            return "\n".join(f"> {line}".rstrip() for line in inner.splitlines())
        if kind in ("fence", "code_block"):
            return _code(node.content, width)
        if kind == "table":
            return self.table(node, width)
        if kind == "hr":
            return "* * *"
        if kind == "html_block":
            return "\n".join(wrap(" ".join(self.raw_html(node.content).split()), width))
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
                          for line in wrap(f"{name}: {cell}", width))
                for row in rows[1:]
            )  # fmt: skip
        lines = [" | ".join(cell.rjust(size) if align else cell.ljust(size)
                            for cell, size, align in zip(row, sizes, right, strict=True)).rstrip()
                 for row in rows]  # fmt: skip
        return "\n".join([lines[0], "-+-".join("-" * size for size in sizes), *lines[1:]])

    def image(self, image: SyntaxTreeNode, link: SyntaxTreeNode | None) -> str:
        text = f"[image: {inline_text(image)}] {image.attrs.get('src', '')}"
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
            return self.raw_html(node.content)
        inner = self.inlines(node.children)
        if kind == "strong":
            return f"*{inner}*"
        if kind == "em":
            return f"_{inner}_"
        if kind == "link":
            return self.link(inner, str(node.attrs.get("href", "")))
        return inner

    def link(self, text: str, url: str) -> str:
        # An autolink (or a link whose text is its address) needs no reference.
        if text.strip() in (url, url.removeprefix("mailto:")):
            return text
        return f"{text} {self.reference(url)}"

    def raw_html(self, fragment: str) -> str:
        """Raw HTML from the issue as text: its links and images kept like Markdown's."""
        reader = _HtmlReader(self)
        reader.feed(fragment)
        reader.close()
        return "".join(reader.parts)


class _HtmlReader(HTMLParser):
    """Text, links and images of a raw HTML fragment; scripts and styles dropped."""

    def __init__(self, writer: _TextWriter) -> None:
        super().__init__(convert_charrefs=True)
        self.writer = writer
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag in ("script", "style"):
            self.hidden += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "a":
            href = values.get("href", "")
            self.writer.open_links.append(href if _LINKABLE.fullmatch(href) else None)
            self.parts.append("")
        elif tag == "img" and _LINKABLE.fullmatch(values.get("src", "")):
            self.parts.append(f"[image: {values.get('alt', '')}] {values['src']}")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.hidden = max(self.hidden - 1, 0)
        elif tag == "a" and self.writer.open_links:
            href = self.writer.open_links.pop()
            if href:
                self.parts.append(f" {self.writer.reference(href)}")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def _code(content: str, width: int) -> str:
    # Kept line for line; a line too long for the text part is broken (at a space if there
    # is one), marked with ↩ and continued at its own indentation. A line holding a URL
    # stays whole: the URL must survive being copied.
    lines: list[str] = []
    for line in content.removesuffix("\n").expandtabs(4).splitlines():
        line = line.rstrip()
        indent = line[: len(line) - len(line.lstrip())][: width // 2]
        while len(line) > width and "://" not in line and not fields.MARKER.search(line):
            room = width - len(_CONTINUED)
            space = line.rfind(" ", len(indent) + room // 2, room)
            cut = space + 1 if space > 0 else room
            lines.append(line[:cut].rstrip() + _CONTINUED)
            line = indent + line[cut:].lstrip()
        lines.append(line)
    return "\n".join(f"    {line}".rstrip() for line in lines)
