"""Use cases of subscribers: double opt-in, leaving, CSV import."""

from mailer.subscriptions.optin import (
    CONFIRM_RESEND_INTERVAL,
    CONFIRM_UNSENT_LEASE,
    MAX_IMPORT_ERRORS_SHOWN,
    ConfirmationDue,
    add,
    confirm,
    confirm_max_age,
    confirm_url,
    deliver_confirmation,
    find_by_confirm_token,
    find_by_unsubscribe_token,
    read_csv,
    resubscribe,
    send_confirmation,
    subscribe,
    unsubscribe,
)

__all__ = [
    "CONFIRM_RESEND_INTERVAL",
    "CONFIRM_UNSENT_LEASE",
    "ConfirmationDue",
    "MAX_IMPORT_ERRORS_SHOWN",
    "add",
    "confirm",
    "confirm_max_age",
    "confirm_url",
    "deliver_confirmation",
    "find_by_confirm_token",
    "find_by_unsubscribe_token",
    "read_csv",
    "resubscribe",
    "send_confirmation",
    "subscribe",
    "unsubscribe",
]
