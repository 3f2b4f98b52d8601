"""The two operational endpoints: GET /healthz (liveness, and the relays' health for whoever
may read metrics) and GET /metrics (Prometheus text, counted in the database at scrape time).
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from mailer.web import metrics


def _access(request: Request) -> metrics.Access:
    token = request.app.state.config.settings.metrics_token
    # The socket's peer, never X-Forwarded-For: a header is whatever the client says.
    return metrics.access(token.get_secret_value() if token else None,
                          authorization=request.headers.get("authorization"),
                          peer=request.client.host if request.client else None)


async def healthz(request: Request) -> Response:
    """GET /healthz: liveness (the process answers HTTP: 200 "ok"). In `mailer run`, a line
    per relay follows for whoever may read /metrics: up, down and why, or not tried yet."""
    lines = ["ok"]
    health = request.app.state.relay_health
    if health is not None and _access(request) == metrics.Access.ALLOWED:
        for relay in health():
            state = {True: "up", False: "down", None: "not tried yet"}[relay.up]
            lines.append(f"relay {relay.relay}: {state}"
                         + (f" ({relay.reason})" if relay.reason else ""))
    return PlainTextResponse("\n".join(lines) + "\n")


async def metrics_text(request: Request) -> Response:
    """GET /metrics: Prometheus text, counted in the database now; for the bearer of
    MAILER_METRICS_TOKEN, or without one for loopback clients only."""
    verdict = _access(request)
    if verdict == metrics.Access.UNAUTHORIZED:
        raise HTTPException(401, "metrics need the bearer token (MAILER_METRICS_TOKEN)",
                            headers={"WWW-Authenticate": "Bearer"})
    if verdict == metrics.Access.FORBIDDEN:
        raise HTTPException(403, "metrics are served to loopback clients only (set "
                                 "MAILER_METRICS_TOKEN to allow others)")
    health = request.app.state.relay_health
    body = await metrics.exposition(request.app.state.store,
                                    request.app.state.config.newsletters,
                                    relays=health() if health is not None else ())
    return Response(body, media_type=metrics.CONTENT_TYPE)
