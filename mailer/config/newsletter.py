"""Newsletter: one newsletter's sender, issues folder, look and schedule (a ScheduleSpec)."""

from __future__ import annotations

from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from zoneinfo import ZoneInfo

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from mailer.config.paths import absolute, root_of
from mailer.schedule import ScheduleSpec


class Newsletter(BaseModel):
    """One newsletter: who sends it, where its issues live, and when it goes out."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    id: str = Field(pattern=r"^[a-z0-9-]+$")
    name: str = Field(min_length=1)
    sender: str = Field(alias="from")
    reply_to: str | None = None
    issues: Path
    template: str = "newsletter.mjml.j2"
    schedule: ScheduleSpec | None = None
    accent_color: str = Field("#2563eb", pattern=r"^#(?:[0-9a-fA-F]{3}){1,2}$")
    logo_url: str | None = Field(None, pattern=r"^https?://\S+$")
    footer_text: str = ""
    allow_html: bool = False

    @field_validator("sender", "reply_to")
    @classmethod
    def _valid_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(c in value for c in "\r\n\0"):
            raise ValueError("must be one line")
        name, addr = parseaddr(value)
        try:
            # Syntax only: the From address of a self-hosted sender may be on a local domain.
            addr = validate_email(addr, check_deliverability=False,
                                  globally_deliverable=False).normalized
        except EmailNotValidError as exc:
            raise ValueError(f"expected 'Name <address>' or an address: {exc}") from None
        # Address() quotes a name that needs it ("Lab, Inc." stays one mailbox).
        return str(Address(display_name=name, addr_spec=addr)) if name else addr

    @field_validator("issues")
    @classmethod
    def _existing_issues(cls, value: Path, info: ValidationInfo) -> Path:
        path = absolute(value, root_of(info))
        if not path.is_dir():
            raise ValueError(f"issues folder not found: {path}")
        return path

    @field_validator("template")
    @classmethod
    def _relative_template(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError("expected a file name under templates/")
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The newsletter's time zone (its schedule's, else UTC): naive issue dates use it."""
        return ZoneInfo(self.schedule.timezone if self.schedule else "UTC")
