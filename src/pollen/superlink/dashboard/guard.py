"""What every request to the dashboard passes first: read-only methods, the token, and
the headers that keep a browser strict.

With a token, a request shows it as ``Authorization: Bearer TOKEN`` (scrapers,
scripts), as the cookie a browser got by opening a page once with ``?token=``, or
as that ``?token=`` itself (answered with the cookie and a redirect to the same
page without the token, so that it leaves the address bar). A wrong token is
answered 401, written to the audit trail and counted against its address by the
same limiter as failed joins; over the limit the address gets 429 until it may
try again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.responses import HTMLResponse, RedirectResponse, Response

from pollen.errors import StorageError
from pollen.superlink.audit import Audit
from pollen.superlink.dashboard import pages
from pollen.superlink.peers import source_of
from pollen.superlink.rate_limit import FailureLimiter, unproven

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

API = "dashboard"
"""The audit trail's name for this endpoint."""

WRONG_TOKEN = "wrong dashboard token"
THROTTLED = "too many wrong dashboard tokens from this address"
COOKIE = "pollen_dashboard"
READ_METHODS = frozenset({"GET", "HEAD"})

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
NO_STORE = (b"cache-control", b"no-store")


@dataclass
class TokenCheck:
    """The token, and where wrong ones are counted and written down."""

    token: str
    limiter: FailureLimiter
    audit: Audit
    secure_cookie: bool
    """The dashboard is served over TLS: its cookie travels over TLS only."""

    def cookie_value(self) -> str:
        """What the browser keeps: derived from the token, never the token itself."""
        return hmac.new(self.token.encode(), b"pollen dashboard cookie", hashlib.sha256).hexdigest()

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.token.encode())


class Guard:
    """An ASGI app that lets through to ``app`` only what the rules above allow."""

    def __init__(
        self, app: App, check: TokenCheck | None, on_refused: Callable[[], None] = lambda: None
    ) -> None:
        self.app = app
        self.check = check
        self.on_refused = on_refused
        """Told of each refusal written to the audit trail (the live security page)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")  # the package's CSS: public
        send = _with_headers(send, cache=static)
        if scope["method"] not in READ_METHODS:
            response: Response = Response(
                "This dashboard is read-only: GET and HEAD only.\n",
                405,
                headers={"Allow": "GET, HEAD"},
                media_type="text/plain",
            )
        elif self.check is None or static:
            await self.app(scope, receive, send)
            return
        else:
            refusal = self._refusal(scope)
            if refusal is None:
                await self.app(scope, receive, send)
                return
            response = refusal
        await response(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        """None: the request may pass; else the answer that refuses or redirects it."""
        assert self.check is not None
        check = self.check
        peer = _peer(scope)
        limit = unproven(source_of(peer))
        wait = check.limiter.retry_after(limit)
        if wait > 0:
            check.limiter.record_failure(limit)  # a flood keeps its address limited
            self._audit("throttled", peer, THROTTLED)
            return Response(
                f"{THROTTLED}; retry in {wait:.0f} s\n",
                429,
                headers={"Retry-After": str(max(1, round(wait)))},
                media_type="text/plain",
            )
        bearer, cookie, query = _presented(scope)
        if bearer is not None:
            return None if check.matches(bearer) else self._wrong(limit, peer)
        if query is not None:
            if not check.matches(query):
                return self._wrong(limit, peer)
            return self._cookie_redirect(scope)
        if cookie is not None and hmac.compare_digest(
            cookie.encode("latin-1"), check.cookie_value().encode()
        ):
            return None
        return HTMLResponse(pages.sign_in().document(), 401, headers={"WWW-Authenticate": "Bearer"})

    def _wrong(self, limit: tuple[str, str], peer: str) -> Response:
        assert self.check is not None
        self.check.limiter.record_failure(limit)
        self._audit("reject", peer, WRONG_TOKEN)
        return HTMLResponse(pages.sign_in().document(), 401, headers={"WWW-Authenticate": "Bearer"})

    def _audit(self, event: str, peer: str, reason: str) -> None:
        assert self.check is not None
        try:
            self.check.audit.record(API, event, "-", peer, reason)
        except StorageError as exc:  # the refusal stands; the disk is the operator's to fix
            logger.error("audit of a refused dashboard request not stored: %s", exc)
        self.on_refused()

    def _cookie_redirect(self, scope: Scope) -> Response:
        """The browser keeps the cookie and goes to the same page without ``?token=``."""
        assert self.check is not None
        rest = [(k, v) for k, v in _query(scope) if k != "token"]
        target = scope["path"] + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, 303)
        response.set_cookie(
            COOKIE,
            self.check.cookie_value(),
            httponly=True,
            samesite="strict",
            secure=self.check.secure_cookie,
            path="/",
        )
        return response


def _with_headers(send: Send, cache: bool) -> Send:
    """``send`` that adds the security headers (and, but for static files, no-store)."""
    extra = SECURITY_HEADERS if cache else [*SECURITY_HEADERS, NO_STORE]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return sending


def _peer(scope: Scope) -> str:
    """The client as gRPC names a peer (``ipv4:HOST:PORT``), so that the audit trail and
    the limiter count it as they count failed joins."""
    client = scope.get("client")
    if not client:
        return "unknown"
    host, port = client[0], client[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _query(scope: Scope) -> list[tuple[str, str]]:
    return parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def _presented(scope: Scope) -> tuple[str | None, str | None, str | None]:
    """The bearer token, the cookie and the ``?token=`` a request carries (None: absent)."""
    bearer = cookie = None
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                bearer = credentials.strip()
        elif name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key == COOKIE:
                    cookie = val
    query = next((v for k, v in _query(scope) if k == "token"), None)
    return bearer, cookie, query
