"""The HTTP side (Starlette): the app and its routes table, and `mailer serve`."""

from mailer.web.app import HONEYPOT, create_app, routes, serve
from mailer.web.guards import MAX_BODY

__all__ = ["HONEYPOT", "MAX_BODY", "create_app", "routes", "serve"]
