"""Swagger UI at ``/docs`` on the gateway, over the gateway's own ``/openapi.json``.

The page and its start-up script are ours (no inline code); Swagger UI's files come from the
``flask-swagger-ui`` distribution's ``dist`` folder (its JavaScript and CSS only: nothing of Flask is
imported), served from this origin with no CDN. Every answer carries the console's browser headers
with a Content-Security-Policy that allows this origin only (``img-src`` also allows ``data:``, the
icons Swagger UI's stylesheet embeds). ``/docs`` needs no key, as ``/openapi.json`` does not; the
page's "Authorize" button sends the key the user types to the API, same origin.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from shared.errors import MethodNotAllowed, NotFound

PREFIX = "/docs"
# The files of Swagger UI the page loads, and nothing else of its folder.
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Kinfer API</title>
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-ui-standalone-preset.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
INIT = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "StandaloneLayout",
});
"""


def dist_folder() -> Path:
    """Swagger UI's ``dist`` folder inside the installed ``flask_swagger_ui`` package (not imported)."""
    spec = importlib.util.find_spec("flask_swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("flask-swagger-ui is not installed (a dependency of kinfer: reinstall the package)")
    return Path(next(iter(spec.submodule_search_locations))) / "dist"


def docs_page() -> Any:
    """An entry point (starlette Request -> Response) answering ``/docs`` and its files."""
    from shared.web.request import request_id_of
    from shared.web.responses import error_response
    from shared.web.static import StaticFiles, secure

    assets = StaticFiles(dist_folder())
    ours = {"": (PAGE, "text/html; charset=utf-8"), "init.js": (INIT, "text/javascript; charset=utf-8")}

    async def swagger_ui(request: Any) -> Any:
        from starlette.responses import RedirectResponse, Response

        request_id = request_id_of(request.headers)
        name = request.url.path[len(PREFIX) :].lstrip("/")
        if request.url.path == PREFIX:
            response: Response = RedirectResponse(PREFIX + "/", status_code=308)
        elif request.method not in ("GET", "HEAD"):
            refused = MethodNotAllowed(f"{request.method} is not allowed on {PREFIX}/", headers={"Allow": "GET, HEAD"})
            response = error_response(refused, request_id, "")
        elif name in ours:
            body, content_type = ours[name]
            response = Response(body, media_type=content_type, headers={"Cache-Control": "no-cache"})
        elif name in ASSETS:
            response = assets.answer(name, request.headers.get("if-none-match"))
        else:
            response = error_response(NotFound(f"no file {name[:64]!r} under {PREFIX}/"), request_id, "")
        secure(response)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Request-ID"] = request_id
        return response

    return swagger_ui
