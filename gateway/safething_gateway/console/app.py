"""The console's pages and endpoints (FastAPI + Jinja2 templates + htmx fragments).

Pages render on the server; htmx swaps fragments (search, pagination,
forms); ``/live`` is the tab's one server-sent-event stream. Every page but
``/setup``, ``/login`` and ``/static`` needs a session; every state change
passes :class:`~safething_gateway.console.guard.Guard` (same origin only) and
is done with the session's unlocked owner identity, then written to the
signed audit log.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from markupsafe import escape

from safething.errors import (
    NoSuchDataError,
    SafeThingError,
    TamperedDataError,
    WrongPasswordError,
)
from safething.things import Action, Attribute, ValueType
from safething_gateway.console.auth import Session, SlowDownError
from safething_gateway.console.console import Console
from safething_gateway.console.data import RANGES, fingerprint
from safething_gateway.console.guard import Guard
from safething_gateway.provisioning import device_config, qr_svg

__all__ = ["create_app"]

HERE = Path(__file__).parent
_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(t: float | None) -> str:
    if not t:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


_env.filters["when"] = _when
_env.filters["show"] = _show
_env.filters["fingerprint"] = fingerprint
_env.filters["short"] = lambda key: f"{key[:8]}…" if key else "—"


class _Redirect(Exception):
    def __init__(self, to: str) -> None:
        self.to = to


def create_app(console: Console) -> Any:
    """The ASGI application (wrapped in the guard) for ``console``."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    data = console.data

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        session = getattr(request.state, "session", None)
        notices: list[str] = []
        if session is not None and not name.startswith("_"):  # a whole page, not a fragment
            notices, session.notices = session.notices, []
        html = _env.get_template(name).render(
            session=session,
            path=request.url.path,
            owner=console.owner.public_sign_key.hex(),
            login=console.settings.login_required,
            notices=notices,
            **ctx,
        )
        return HTMLResponse(html, status_code=status)

    # on loopback without login (the default there): every request acts as the owner
    # through the process's own identity; see docs/security.md#the-web-console
    local = (
        None
        if console.settings.login_required
        else Session("loopback", console.owner, "loopback", "no login on loopback")
    )

    def session_of(request: Request) -> Session:
        if local is not None:
            request.state.session = local
            return local
        session = console.sessions.get(request.cookies.get(console.cookie_name))
        if session is None:
            raise _Redirect("/login" if console.binding.bound else "/setup")
        request.state.session = session
        return session

    async def form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > 64 * 1024:
            raise HTTPException(413, "form too large")
        return {k: v[-1] for k, v in parse_qs(body.decode(errors="replace")).items()}

    def actor(request: Request, session: Session | None = None) -> str:
        where = request.client.host if request.client else "?"
        if session is local:
            return f"owner (no login, loopback) from {where}"
        return f"owner (session {session.short}) from {where}" if session else f"from {where}"

    async def record(actor: str, action: str, target: str = "", detail: str = "") -> None:
        """An audit entry, signed and written off the event loop (SQLite)."""
        await asyncio.to_thread(console.audit.append, actor, action, target, detail)

    @app.exception_handler(_Redirect)
    async def redirect(request: Request, exc: _Redirect) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=204, headers={"HX-Redirect": exc.to})
        return RedirectResponse(exc.to, status_code=303)

    # --- owner binding and login ----------------------------------------------------------

    @app.get("/")
    async def root(request: Request) -> Response:
        session_of(request)
        return RedirectResponse("/things", status_code=303)

    @app.get("/setup")
    async def setup_page(request: Request) -> Response:
        if local is not None:
            return RedirectResponse("/things", status_code=303)
        if console.binding.bound:
            return RedirectResponse("/login", status_code=303)
        return page(request, "setup.html", error="")

    @app.post("/setup")
    async def setup(request: Request) -> Response:
        f = await form(request)
        where = request.client.host if request.client else "?"
        try:
            console.backoff.check(f"addr:{where}", "account:setup")
        except SlowDownError as e:
            return page(request, "setup.html", 429, error=str(e))
        if f.get("password", "") != f.get("confirm", ""):
            return page(request, "setup.html", 400, error="the two passwords differ")
        try:
            await asyncio.to_thread(console.binding.bind, f.get("code", ""), f.get("password", ""))
        except ValueError as e:
            if "setup code" in str(e):
                console.backoff.failed(f"addr:{where}", "account:setup")
                await record(actor(request), "setup-failed", detail=str(e))
            return page(request, "setup.html", 400, error=str(e))
        await record(actor(request), "bind-owner", console.owner.public_sign_key.hex())
        return RedirectResponse("/login", status_code=303)

    @app.get("/login")
    async def login_page(request: Request) -> Response:
        if local is not None:
            return RedirectResponse("/things", status_code=303)
        if not console.binding.bound:
            return RedirectResponse("/setup", status_code=303)
        return page(request, "login.html", error="")

    @app.post("/login")
    async def login(request: Request) -> Response:
        f = await form(request)
        where = request.client.host if request.client else "?"
        keys = (f"addr:{where}", "account:owner")
        try:
            console.backoff.check(*keys)
        except SlowDownError as e:
            return page(request, "login.html", 429, error=str(e))
        try:
            identity = await asyncio.to_thread(console.binding.unlock, f.get("password", ""))
        except WrongPasswordError:
            wait = console.backoff.failed(*keys)
            await record(
                actor(request), "login-failed", detail=f"wrong password; next try in {wait:g} s"
            )
            return page(
                request,
                "login.html",
                401,
                error=f"wrong password; wait {wait:g} s before the next try",
            )
        console.backoff.succeeded(*keys)
        session = console.sessions.create(identity, where, request.headers.get("user-agent", ""))
        await record(actor(request, session), "login")
        response = RedirectResponse("/things", status_code=303)
        response.set_cookie(
            console.cookie_name,
            session.id,
            httponly=True,
            samesite="strict",
            secure=console.tls,
            path="/",
        )
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        session = session_of(request)
        console.sessions.end(session.id)
        await data.forget_client(session.id)
        await record(actor(request, session), "logout")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(console.cookie_name, path="/")
        return response

    @app.get("/sessions")
    async def sessions(request: Request) -> Response:
        session_of(request)
        return page(request, "sessions.html", sessions=console.sessions.all(), when=_when)

    @app.post("/sessions/{short}/revoke")
    async def revoke_session(request: Request, short: str) -> Response:
        session = session_of(request)
        if console.sessions.revoke(short):
            await record(actor(request, session), "revoke-session", short)
        return RedirectResponse("/sessions", status_code=303)

    # --- things -----------------------------------------------------------------------------

    def things_query(request: Request) -> dict[str, Any]:
        q = request.query_params
        devices = data.device_map()
        online = q.get("online", "")
        transport = q.get("transport", "")
        where = q.get("gateway", "")
        ids: set[str] | None = None
        exclude: set[str] | None = None
        if transport or where == "this":
            ids = {d.id for d in devices.values() if not transport or d.transport == transport}
        elif where == "other":
            exclude = set(devices)
        try:
            number = max(1, int(q.get("page", "1")))
        except ValueError:
            number = 1
        size = console.settings.page_size
        started = time.perf_counter()
        rows, total = data.index.query(
            search=q.get("q", "")[:100],
            status=q.get("status", ""),
            online=online,
            has=q.get("has", "")[:100],
            ids=ids,
            exclude=exclude,
            offset=(number - 1) * size,
            limit=size,
        )
        return {
            "rows": rows,
            "total": total,
            "page": number,
            "pages": max(1, math.ceil(total / size)),
            "q": dict(q),
            "devices": devices,
            "loaded": data.index.loaded,
            "query_ms": (time.perf_counter() - started) * 1000,
        }

    @app.get("/things")
    async def things(request: Request) -> Response:
        started = time.perf_counter()
        session_of(request)
        ctx = things_query(request)
        if request.headers.get("hx-request") and request.headers.get("hx-target") == "things-rows":
            response = page(request, "_things_rows.html", **ctx)
        else:
            response = page(request, "things.html", **ctx)
        spent = (time.perf_counter() - started) * 1000
        response.headers["server-timing"] = f"render;dur={spent:.2f}"
        return response

    def thing_or_404(thing_id: str) -> None:
        if thing_id not in data.index.rows:
            raise HTTPException(404, f"no thing {thing_id!r}")

    @app.get("/things/{thing_id}")
    async def thing(request: Request, thing_id: str) -> Response:
        session = session_of(request)
        try:
            view = await data.view(thing_id)
        except NoSuchDataError:
            return page(request, "error.html", 404, message=f"no thing {thing_id!r} in this store")
        except TamperedDataError as e:
            return page(request, "error.html", 409, message=f"refused tampered data: {e}")
        d = view.description
        values = {a.name: await data.value(view, a.name) for a in d.attributes if a.dynamic}
        desired = {
            a.name: await data.desired(view, values[a.name])
            for a in d.attributes
            if a.dynamic and a.writable
        }
        events = {t.name: await data.events(view, t.name) for t in d.topics}
        return page(
            request,
            "thing.html",
            view=view,
            d=d,
            values=values,
            desired=desired,
            events=events,
            subscriptions=data.index.subscriptions_of(thing_id),
            subscribers=data.index.subscriptions_to(thing_id),
            members=await data.members(session.identity, thing_id),
            is_owner=view.owner.sign_key == session.identity.public_sign_key,
            device=data.device_map().get(thing_id),
            row=data.index.get(thing_id),
            ranges=list(RANGES),
            input_of=_input_of,
        )

    @app.get("/things/{thing_id}/history/{attribute}")
    async def history(
        request: Request, thing_id: str, attribute: str, range: str = "hour"
    ) -> Response:
        session_of(request)
        try:
            doc = await data.history(thing_id, attribute, range)
        except (SafeThingError, ValueError, KeyError) as e:
            raise HTTPException(404, str(e)) from None
        return Response(json.dumps(doc), media_type="application/json")

    async def lifecycle(request: Request, thing_id: str, status: str) -> Response:
        session = session_of(request)
        f = await form(request)
        thing_or_404(thing_id)
        row = data.index.rows[thing_id]
        if status == "published" and f.get("fingerprint", "").replace(" ", "") != row.key:
            return page(
                request,
                "error.html",
                400,
                message="confirm the thing's key fingerprint before publishing it",
            )
        try:
            old = await data.set_status(session.identity, thing_id, status)
        except SafeThingError as e:
            return page(request, "error.html", 403, message=str(e))
        await record(
            actor(request, session),
            "publish" if status == "published" else "disable",
            thing_id,
            f"was {old}",
        )
        return RedirectResponse(f"/things/{thing_id}", status_code=303)

    @app.post("/things/{thing_id}/publish")
    async def publish(request: Request, thing_id: str) -> Response:
        return await lifecycle(request, thing_id, "published")

    @app.post("/things/{thing_id}/disable")
    async def disable(request: Request, thing_id: str) -> Response:
        return await lifecycle(request, thing_id, "disabled")

    @app.post("/things/{thing_id}/actions/{action_name}")
    async def request_action(request: Request, thing_id: str, action_name: str) -> Response:
        session = session_of(request)
        f = await form(request)
        things = data.client_for(session.id, session.identity)
        try:
            view = await things.view(thing_id, refresh=True)
            spec = view.description.action(action_name)
            args = _args(spec, f)
            handle = await things.request(thing_id, action_name, **args)
        except (SafeThingError, ValueError, TypeError) as e:
            return page(
                request, "_request.html", 400, error=str(e), action=action_name, handle=None
            )
        who = actor(request, session)
        await record(
            who, "request", thing_id, f"{action_name} {json.dumps(args)} id {handle.request_id}"
        )

        async def final(status: Any) -> None:
            await record(
                who,
                "result",
                thing_id,
                f"{action_name} id {handle.request_id}: {status.state} {_show(status.result)}",
            )

        console.hub.follow(handle, final)
        return page(
            request, "_request.html", error="", action=action_name, handle=handle, args=args
        )

    @app.post("/things/{thing_id}/desired/{attribute}")
    async def desired(request: Request, thing_id: str, attribute: str) -> Response:
        session = session_of(request)
        f = await form(request)
        things = data.client_for(session.id, session.identity)
        try:
            view = await things.view(thing_id, refresh=True)
            attr = view.description.attribute(attribute)
            value = _convert(attr, f.get("value", ""))
            await data.set_desired(session.identity, things, thing_id, attribute, value)
            await console.hub.desired_changed(thing_id, attribute)
        except (SafeThingError, ValueError, TypeError) as e:
            return HTMLResponse(f"<span class='bad'>{escape(str(e))}</span>", status_code=400)
        await record(
            actor(request, session), "set-desired", thing_id, f"{attribute} = {_show(value)}"
        )
        return HTMLResponse(f"<span class='ok'>desired {escape(_show(value))} sent (signed)</span>")

    @app.post("/things/{thing_id}/members")
    async def members(request: Request, thing_id: str) -> Response:
        session = session_of(request)
        f = await form(request)
        try:
            if f.get("remove"):
                await data.remove_member(session.identity, thing_id, f["remove"])
                what = "remove-member"
            else:
                await data.add_member(
                    session.identity, thing_id, f.get("sign", ""), f.get("enc", "")
                )
                what = "add-member"
        except (SafeThingError, ValueError) as e:
            return page(request, "error.html", 400, message=str(e))
        await record(actor(request, session), what, thing_id, f.get("remove") or f.get("sign", ""))
        return RedirectResponse(f"/things/{thing_id}", status_code=303)

    # --- devices and provisioning ------------------------------------------------------------

    @app.get("/devices")
    async def devices(request: Request) -> Response:
        session_of(request)
        ctx: dict[str, Any] = {"devices": data.devices(), "gateway": data.registry is not None}
        if request.headers.get("hx-request"):
            return page(request, "_devices_rows.html", **ctx)
        return page(request, "devices.html", **ctx)

    @app.post("/devices/{device_id}/revoke")
    async def revoke(request: Request, device_id: str) -> Response:
        session = session_of(request)
        try:
            notes = await data.revoke(device_id)
        except (SafeThingError, ValueError) as e:
            return page(request, "error.html", 404, message=str(e))
        await record(actor(request, session), "revoke", device_id, "; ".join(notes))
        session.notices = [f"revoked {device_id}: the gateway refuses it from now on", *notes]
        return RedirectResponse("/devices", status_code=303)

    @app.get("/provision")
    async def provision_page(request: Request) -> Response:
        session_of(request)
        return page(request, "provision.html", doc=None, error="", gateway=data.admin is not None)

    @app.post("/provision")
    async def provision(request: Request) -> Response:
        session = session_of(request)
        f = await form(request)
        if data.admin is None:
            return page(
                request,
                "provision.html",
                400,
                doc=None,
                gateway=False,
                error="no gateway in this process",
            )
        device_id = f.get("device_id", "").strip()
        transport = f.get("transport", "mqtt")
        try:
            if transport not in ("mqtt", "coap", "http"):
                raise ValueError("choose mqtt, coap or http")
            done = await data.provision(device_id, transport)
            device = done.record
            doc = device_config(
                console.endpoints,
                device_id,
                transport,
                device.secret,
                wifi={"ssid": f.get("wifi_ssid", ""), "password": f.get("wifi_password", "")},
                mqtt_login=done.mqtt_login,
                console_tls=console.tls_fingerprint,
                protocol=device.protocol,
            )
        except (SafeThingError, ValueError) as e:
            return page(request, "provision.html", 400, doc=None, gateway=True, error=str(e))
        await record(actor(request, session), "provision", device_id, transport)
        return page(
            request,
            "provision.html",
            doc=doc,
            text=json.dumps(doc, indent=2),
            qr=qr_svg(doc),
            key=device.identity.public_sign_key.hex(),
            notes=done.notes,
            gateway=True,
            error="",
        )

    # --- activity -------------------------------------------------------------------------------

    @app.get("/activity")
    async def activity(request: Request) -> Response:
        session_of(request)
        entries = await asyncio.to_thread(lambda: list(console.audit.entries()))
        broken = [e for e in entries if not e.ok]
        return page(
            request,
            "activity.html",
            entries=entries[::-1],
            broken=broken,
            key=console.audit.key.hex(),
        )

    @app.get("/activity/export")
    async def export(request: Request) -> Response:
        session_of(request)
        return Response(
            await asyncio.to_thread(lambda: "".join(console.audit.export())),
            media_type="application/x-ndjson",
            headers={"content-disposition": "attachment; filename=safething-audit.jsonl"},
        )

    # --- the tab's live stream ------------------------------------------------------------------

    @app.get("/live")
    async def live(request: Request, keys: str = "") -> Response:
        session_of(request)
        wanted = frozenset(k for k in keys.split(",") if k and len(k) < 200 and k.count(":") <= 1)
        return StreamingResponse(
            console.hub.stream(frozenset(list(wanted)[:20])),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},
        )

    return Guard(app, loopback_only=console.settings.loopback)


def _input_of(attr_or_param: Any) -> dict[str, Any]:
    """How to ask for a value of this schema in a form."""
    schema = attr_or_param.schema
    t = schema.type
    if t == ValueType.BOOLEAN:
        return {"kind": "checkbox"}
    if t == ValueType.ENUM:
        return {"kind": "select", "choices": list(schema.choices or ())}
    if t in (ValueType.NUMBER, ValueType.INTEGER):
        return {
            "kind": "number",
            "step": "1" if t == ValueType.INTEGER else "any",
            "min": schema.minimum,
            "max": schema.maximum,
            "default": schema.default,
            "unit": schema.unit or "",
        }
    if t in (ValueType.OBJECT, ValueType.ARRAY):
        return {"kind": "json"}
    return {"kind": "text", "default": schema.default}


def _convert(item: Attribute | Any, text: str) -> Any:
    t = item.schema.type
    if t == ValueType.BOOLEAN:
        return text in ("on", "true", "1")
    if t == ValueType.NUMBER:
        return float(text)
    if t == ValueType.INTEGER:
        return int(text)
    if t in (ValueType.OBJECT, ValueType.ARRAY):
        return json.loads(text)
    return text


def _args(spec: Action, f: dict[str, str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for p in spec.params:
        if p.schema.type == ValueType.BOOLEAN:
            args[p.name] = p.name in f
        elif f.get(p.name, "") != "":
            try:
                args[p.name] = _convert(p, f[p.name])
            except ValueError:
                raise ValueError(f"{p.name}: expected {p.schema.type}, got {f[p.name]!r}") from None
    return args
