"""schedules.yaml and MAILER_* into frozen settings."""

from mailer.config.model import (
    BUNDLED_TEMPLATES,
    SECRETS,
    Config,
    Newsletter,
    Settings,
    load,
    read_secret_file,
)

__all__ = [
    "BUNDLED_TEMPLATES",
    "Config",
    "Newsletter",
    "SECRETS",
    "Settings",
    "load",
    "read_secret_file",
]
