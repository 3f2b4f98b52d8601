"""The subscriber's own page, GET and POST /manage/{token}: their newsletters, their name,
"download my data" and "delete me".

GET only shows (mail scanners open every link). Every change is a POST to the same URL,
a form whose `action` field says what: `leave` or `join` (with `newsletter`), `rename`
(with `name`), `export` (the JSON document, as a download) or `delete` (with
`confirm=yes`, the box the page asks to tick). Each is idempotent and answers with the
page as it is now, saying what changed. The token in the path is the only credential
(as for unsubscribing): it reached the address by mail.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mailer.config import Config
from mailer.errors import TokenError
from mailer.keys import token_key
from mailer.rows import PersonRow
from mailer.subscriptions import manage
from mailer.tokens import read_manage_token
from mailer.web.guards import read_fields
from mailer.web.pages import page, wants_json

__all__ = ["FIELDS", "manage_action", "manage_page"]

FIELDS = ("action", "newsletter", "name", "confirm")


def _config(request: Request) -> Config:
    config: Config = request.app.state.config
    return config


def _store(request: Request) -> manage.ManageStore:
    store: manage.ManageStore = request.app.state.store
    return store


def _show(request: Request, person: PersonRow, *, done: str = "", status: int = 200
          ) -> Response:
    config = _config(request)
    states = {s.newsletter: s for s in person.subscriptions}
    # Every newsletter of this install, each with its switch; a subscription to one that
    # left schedules.yaml cannot be switched and is in the data download.
    lists = [(n, states.get(n.id)) for n in config.newsletters.values()]
    return page(request, "manage", status=status, title="Your subscriptions", lists=lists,
                person_name=person.name, token=request.path_params["token"], done=done)


async def manage_page(request: Request) -> Response:
    """GET /manage/{token}: the subscriber's own page; changes nothing. 400 when the link
    is forged, made for something else, or its subscriber was erased or removed."""
    person = await manage.find_person(_config(request), _store(request),
                                      request.path_params["token"])
    return _show(request, person)


async def manage_action(request: Request) -> Response:
    """POST /manage/{token}: one change (see the module's docstring); idempotent."""
    config, store = _config(request), _store(request)
    token = request.path_params["token"]
    fields = await read_fields(request, FIELDS)
    action = fields.get("action", "")
    if action not in manage.ACTIONS:
        raise HTTPException(400, f"action: expected one of {', '.join(manage.ACTIONS)}")
    try:
        person = await manage.find_person(config, store, token)
    except TokenError:
        # Erasing twice (a double click, a reload) is done, not an error; the signature is
        # still checked first, so a forged link learns nothing here.
        read_manage_token(token_key(config.settings), token)
        if action == "delete":
            return page(request, "manage_erased", title="Your address is erased")
        raise
    newsletter = fields.get("newsletter", "")
    names = {n.id: n.name for n in config.newsletters.values()}
    now = request.app.state.clock.now()  # the daemon's: automatic emails count from it
    if action == "leave":
        await manage.leave(config, store, person, newsletter, now=now)
        done = f"You left {names.get(newsletter, newsletter)}."
    elif action == "join":
        await manage.join(config, store, person, newsletter, now=now)
        if request.app.state.on_confirmed is not None:  # a welcome email goes at once
            request.app.state.on_confirmed(newsletter)
        done = f"You are subscribed to {names[newsletter]}."
    elif action == "rename":
        name = await manage.rename(store, person, fields.get("name", ""))
        done = "Your name is saved." if name else "Your name is removed."
    elif action == "export":
        data = await manage.export(store, person)
        # A file to keep, not a page: the browser saves it under this name.
        return JSONResponse(data, headers={
            "content-disposition": 'attachment; filename="my-newsletter-data.json"'})
    else:
        if fields.get("confirm") != "yes":
            raise HTTPException(400, "tick the box to confirm that your address should be "
                                     "erased; nothing was changed")
        await manage.erase(config, store, person)
        if wants_json(request):
            return JSONResponse({"status": "erased"})
        return page(request, "manage_erased", title="Your address is erased")
    if wants_json(request):
        return JSONResponse({"status": "ok", "message": done})
    fresh = await manage.find_person(config, store, token)
    return _show(request, fresh, done=done)

