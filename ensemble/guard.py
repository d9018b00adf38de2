"""`ensemble serve --token`: who may use the server, for scripts and for people in a browser.

A script sends `Authorization: Bearer TOKEN`. A browser cannot add that header to the pages it loads,
so a person opens `/login`, types the token once, and gets it back as a cookie (HttpOnly, SameSite
Strict, scoped to the server's path): the guard accepts either. Every path but `/health` and `/login`
needs one of them; tokens are compared in constant time. Without a token the guard lets everything
through (the server binds to 127.0.0.1 unless told otherwise).
"""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from fastapi import Request  # the serve extra; only `ensemble serve` imports this module
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

COOKIE = "zones_token"
OPEN_PATHS = ("/health", "/login")
LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>sign in</title></head>
<body style="font-family:sans-serif;max-width:30em;margin:3em auto"><h1>prostate zones</h1>
<form method="post" action="login"><label>Token <input type="password" name="token" autofocus></label>
<button>Sign in</button></form></body></html>"""


def token_of(scope) -> bytes:
    """The token a request carries: its bearer header, else its cookie (b"" when none)."""
    headers = dict(scope["headers"])
    bearer = headers.get(b"authorization", b"")
    if bearer.startswith(b"Bearer "):
        return bearer[len(b"Bearer "):]
    morsel = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1")).get(COOKIE)
    return morsel.value.encode() if morsel else b""


class Guard:
    """ASGI middleware (module docstring); `deny(scope, receive, send)` answers a refused request."""

    def __init__(self, app, token: str | None, deny):
        self.app, self.token, self.deny = app, token, deny

    def allows(self, scope) -> bool:
        return (self.token is None or scope["path"] in OPEN_PATHS
                or hmac.compare_digest(token_of(scope), self.token.encode()))

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self.allows(scope):
            return await self.deny(scope, receive, send)
        return await self.app(scope, receive, send)


def add_login(app, token: str | None) -> None:
    """GET /login (a form) and POST /login (sets the cookie, back to the page; 401 for a wrong token)."""
    @app.get("/login", response_class=HTMLResponse)
    def login_page():
        return LOGIN_PAGE

    @app.post("/login")
    async def login(request: Request):
        given = (parse_qs((await request.body()).decode("utf-8", "replace")).get("token") or [""])[0]
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "login: the token does not match; got a wrong one; fix: type the "
                                 "token the server was started with"}, status_code=401)
        answer = RedirectResponse("./", status_code=303)
        answer.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return answer
