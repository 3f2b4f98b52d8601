"""mailer: self-hosted newsletter delivery."""

__version__ = "0.1.0"
