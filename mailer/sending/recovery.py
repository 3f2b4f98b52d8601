"""Sending processes and their crashes: a worker's id, and releasing what dead ones held."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime

from mailer.delivery.throttle import HEARTBEAT_TIMEOUT
from mailer.states import utcnow
from mailer.store import Store

log = logging.getLogger("mailer.sends")


def new_worker_id() -> str:
    """host:pid:random — the pid lets a restart on the same host see at once that we died."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def recover_dead_workers(store: Store, *, now: datetime | None = None) -> int:
    """Release what crashed senders held; returns how many deliveries became UNKNOWN.

    A worker is dead when it ran on this host and its pid is gone, or when its heartbeat
    is older than HEARTBEAT_TIMEOUT (another host, or a hung process).
    """
    now = now or utcnow()
    host = socket.gethostname()
    dead = [
        w.id for w in await store.workers()
        if (w.host == host and not _pid_alive(w.pid)) or now - w.heartbeat_at > HEARTBEAT_TIMEOUT
    ]
    unknown = await store.release_dead_workers(dead)
    if dead:
        log.warning("released dead senders", extra={"senders": len(dead), "unknown": unknown})
    return unknown
