"""ORM objects to the frozen rows the store hands out: nothing outside the store lazy-loads."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from mailer.rows import SendRow, SubscriptionRow, WorkerRow
from mailer.store.models import Send, SenderProcess, Subscription

RowT = TypeVar("RowT")


def _copy(row_type: type[RowT], obj: Any) -> RowT:
    # The row's field names are the model's column names, so one copy serves every row.
    return row_type(**{f.name: getattr(obj, f.name) for f in fields(row_type)})  # type: ignore[arg-type]


def send_row(send: Send) -> SendRow:
    return _copy(SendRow, send)


def subscription_row(subscription: Subscription) -> SubscriptionRow:
    return _copy(SubscriptionRow, subscription)


def maybe_subscription_row(subscription: Subscription | None) -> SubscriptionRow | None:
    return None if subscription is None else subscription_row(subscription)


def worker_row(worker: SenderProcess) -> WorkerRow:
    return _copy(WorkerRow, worker)
