"""Routing: one path, one handler per HTTP method (Starlette's Route, with a 405 that names
every method the path has)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send


class Resource(Route):
    """One path with a handler per method (HEAD answered as GET). A 405 names all of them,
    in a steady order: two Routes for one path would each name only their own."""

    def __init__(self, path: str, *, name: str,
                 **handlers: Callable[[Request], Awaitable[Response]]) -> None:
        async def by_method(request: Request) -> Response:
            return await handlers["GET" if request.method == "HEAD" else request.method](request)

        super().__init__(path, by_method, methods=list(handlers), name=name)
        self.allow = ", ".join(sorted(self.methods or ()))

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in (self.methods or ()):
            raise HTTPException(405, headers={"Allow": self.allow})
        await super().handle(scope, receive, send)
