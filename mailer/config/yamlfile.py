"""YAML documents read safely, with the line of every key, so errors can name the place."""

from __future__ import annotations

from typing import Any

import yaml

from mailer.errors import ConfigError, MailerError

Lines = dict[tuple[str, ...], int]


ANCHORS_REFUSED = "anchors and aliases (&x / *x) are not supported"


class _AnchorRefused(yaml.composer.ComposerError):
    """An anchor or alias in a file mailer reads (see _Loader.compose_node)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases, and marks impossible dates (2026-02-30)
    instead of raising a bare ValueError."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # Refused at the first event, before any node exists: an alias shares a node, so a
        # few lines of nested aliases (a "billion laughs") stand for billions of values to
        # every walk of the tree (the line index below, then pydantic), and the CLI runs out
        # of time and memory. Neither schedules.yaml nor front matter needs them.
        if self.check_event(yaml.NodeEvent):  # which parses the next event into current_event
            event = self.current_event
            if event.anchor is not None:  # an alias event carries the anchor it names
                raise _AnchorRefused(None, None, ANCHORS_REFUSED, event.start_mark)
        return super().compose_node(parent, index)

    def construct_yaml_timestamp(self, node: Any) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"not a valid date: {node.value!r} ({exc})", node.start_mark
            ) from None


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def load_yaml(text: str, *, file: str, error: type[MailerError] = ConfigError,
              first_line: int = 1) -> tuple[Any, Lines]:
    """Parse one YAML document; return the data and the 1-based line of every key path.

    Raises:
        error: malformed YAML, a duplicate key, or an anchor or alias, naming the line.
    """
    try:
        loader = _Loader(text)  # the reader rejects non-printable characters right here
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except _AnchorRefused as exc:
        at = exc.problem_mark.line + first_line if exc.problem_mark else first_line
        raise error(ANCHORS_REFUSED, file=file, line=at) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if exc.context_mark and "<stream end>" in (exc.problem or ""):
            mark = exc.context_mark  # an unclosed bracket: point at where it opened
        what = "; ".join(filter(None, (exc.context, exc.problem)))
        line = mark.line + first_line if mark else None
        raise error(f"malformed YAML: {what}", file=file, line=line) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + first_line
        raise error(f"malformed YAML: unacceptable character #x{exc.character:04x}",
                    file=file, line=line) from None
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        raise error(f"malformed YAML: {' '.join(str(exc).split())}", file=file,
                    line=first_line) from None
    lines: Lines = {}
    if node is not None:
        _index_lines(node, (), lines, file=file, error=error, first_line=first_line)
    return data, lines


def _index_lines(node: yaml.Node, path: tuple[str, ...], lines: Lines, *, file: str,
                 error: type[MailerError], first_line: int) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + first_line
            # PyYAML silently keeps the last of two equal keys; a user never means that.
            if key in seen:
                raise error("duplicate key", file=file, line=line, field=".".join((*path, key)))
            seen.add(key)
            lines[(*path, key)] = line
            _index_lines(value_node, (*path, key), lines, file=file, error=error,
                         first_line=first_line)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, str(i))] = item.start_mark.line + first_line
            _index_lines(item, (*path, str(i)), lines, file=file, error=error,
                         first_line=first_line)


def line_of(lines: Lines, path: tuple[str, ...]) -> int | None:
    """The line of `path`, or of its nearest ancestor that has one (a missing key's parent)."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None
