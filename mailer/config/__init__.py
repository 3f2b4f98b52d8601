"""schedules.yaml and MAILER_* into frozen settings."""

from mailer.config.loader import BUNDLED_TEMPLATES, Config, load
from mailer.config.newsletter import Newsletter
from mailer.config.secrets import read_secret_file
from mailer.config.settings import Settings

__all__ = [
    "BUNDLED_TEMPLATES",
    "Config",
    "Newsletter",
    "Settings",
    "load",
    "read_secret_file",
]
