"""Log lines of `mailer run`: one line per event, plain text or JSON, with the event's fields.

An event is a fixed message and its data as fields: `log.info("scheduled",
extra={"newsletter": ...})`, never %-formatting, so the JSON lines keep every value apart.

Logger names are the stable log taxonomy users filter on, not module paths: they name a part
of the service and stay put when code moves between modules. mailer.daemon (start, stop,
reload), mailer.scheduler (the schedule and its slots: runners.scheduler and runners.slots),
mailer.sends (preparing and recovering sends), mailer.sender and mailer.dispatch (sending),
mailer.relays (a relay going down and coming back), mailer.worker (`mailer worker`),
mailer.render, mailer.subscriptions, mailer.confirmations and mailer.web (the HTTP side).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message", "taskName",
}
# Libraries whose INFO lines are noise next to ours: APScheduler says "Running job …" for every
# hand-over, aiosmtpd (the capture server) a line per SMTP command.
# flufl.bounce logs every detector it runs on every returned message at INFO.
QUIET = {"apscheduler": logging.WARNING, "mail.log": logging.WARNING, "alembic": logging.WARNING,
         "flufl.bounce": logging.WARNING}


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The event's own fields: what was passed as `extra=` to the logging call."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _plain(value: Any) -> str:
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class PlainFormatter(logging.Formatter):
    """`2026-12-07T08:00:00.123Z INFO mailer.scheduler: issue due newsletter=ml-issues …`"""

    def format(self, record: logging.LogRecord) -> str:
        fields = "".join(f" {key}={_plain(value)}" for key, value in fields_of(record).items())
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            # The traceback follows on its own lines: it is for a human, not for a parser.
            return f"{line}{fields}\n{self.formatException(record.exc_info)}"
        return line + fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname,
                                "logger": record.name, "event": record.getMessage()}
        data.update(fields_of(record))
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def configure(*, json_lines: bool = False, level: int = logging.INFO,
              stream: TextIO | None = None) -> None:
    """Send every log record of the process to `stream` (stderr) in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(quiet)
