"""The console function: the Kinfer console, one web page under ``/console/`` (``shared.web.static``).

It serves the static files of ``functions/console/static/`` and nothing else: no key is needed for
the page, and the page calls the public API itself, same origin, with the key the user enters
(``Authorization: Bearer``). ``/console`` (and ``/``) redirect to ``/console/`` so that the page's
relative links resolve. Every answer carries the page's security headers (strict CSP, no framing).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from shared.web.dispatch import dispatch
from shared.web.request import Call
from shared.web.route import LIVEZ, Route
from shared.web.routing import Router
from shared.web.runtime import function_services
from shared.web.static import StaticFiles, secure

PREFIX = "/console/"
FILES = StaticFiles(Path(__file__).resolve().parent / "static")
_FILE = {200: ("a file of the console (HTML, JavaScript, CSS)", {"type": "string"}, "text/html")}


class Health(TypedDict):
    status: str
    service: str
    files: int


async def _page(call: Call) -> Response:
    if not call.request.url.path.endswith("/"):
        return RedirectResponse(PREFIX, status_code=308)
    return FILES.answer("", call.header("if-none-match"))


async def _file(call: Call, name: str) -> Response:
    return FILES.answer(name, call.header("if-none-match"))


async def _home(call: Call) -> Response:
    return RedirectResponse(PREFIX, status_code=308)


async def _health(call: Call) -> Health:
    return {"status": "healthy", "service": function_services().settings.service_name, "files": len(FILES.files())}


ROUTES = Router(
    [
        LIVEZ,
        Route("/health", ("GET",), _health, query=(), summary="Health: the console's files are readable"),
        Route(
            "/", ("GET",), _home, query=(), summary="Redirect to the console", responses={308: ("to /console/", None)}
        ),
        Route(
            "/console",
            ("GET",),
            _page,
            query=(),
            summary="The console page (/console redirects to /console/)",
            responses={**_FILE, 308: ("to /console/", None)},
        ),
        Route("/console/<path:name>", ("GET",), _file, query=(), summary="A file of the console", responses=_FILE),
    ],
    title="Kinfer console",
)


@functions_framework.aio.http
async def serve_console(request: Request) -> Response:
    return secure(await dispatch(request, ROUTES, function_services(), "console"))
