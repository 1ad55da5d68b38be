"""CORS for browser clients: the origins of CORS_ALLOWED_ORIGINS may call the API.

API keys travel in the ``Authorization`` (or ``X-API-Key``) header, never in cookies,
so credentialed CORS (``Access-Control-Allow-Credentials``) is never offered: a page
may send a key it holds, but a browser never attaches one on its own. A preflight
needs no key (browsers send none); it answers which methods the path serves and
which request headers a page may send.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from starlette.responses import Response

from shared.errors import Forbidden

ANY = "*"
MAX_AGE_S = 600
REQUEST_HEADERS = ("Authorization", "Content-Type", "X-API-Key", "X-Request-ID", "traceparent", "tracestate")
EXPOSED_HEADERS = (
    "X-Request-ID",
    "X-Trace-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
    "Location",
    "WWW-Authenticate",
)


def allowed_origin(headers: Mapping[str, str], allowed: Sequence[str]) -> str | None:
    """The request's ``Origin`` when CORS_ALLOWED_ORIGINS lets it in, else None."""
    origin = headers.get("origin")
    if not origin or not allowed:
        return None
    return origin if ANY in allowed or origin.rstrip("/").lower() in allowed else None


def decorate(response: Response, headers: Mapping[str, str], allowed: Sequence[str]) -> None:
    """Let an allowed origin's page read ``response`` (its body and the headers a client needs)."""
    if not allowed:
        return
    _vary_origin(response)
    origin = allowed_origin(headers, allowed)
    if origin is not None:
        response.headers.setdefault("Access-Control-Allow-Origin", origin)
        response.headers.setdefault("Access-Control-Expose-Headers", ", ".join(EXPOSED_HEADERS))


def options_response(headers: Mapping[str, str], methods: Iterable[str], allowed: Sequence[str]) -> Response:
    """204 with ``Allow``; for a preflight of an allowed origin also the ``Access-Control-Allow-*`` headers,
    for another origin 403 (the message says which setting lets it in)."""
    methods = sorted(set(methods))
    answer = {"Allow": ", ".join(methods)}
    if headers.get("origin") and headers.get("access-control-request-method"):
        if allowed_origin(headers, allowed) is None:
            raise Forbidden(
                f"origin {headers['origin'][:200]!r} may not call this API from a browser; "
                "the operator lists allowed origins in CORS_ALLOWED_ORIGINS"
            )
        answer.update(
            {
                "Access-Control-Allow-Methods": ", ".join(methods),
                "Access-Control-Allow-Headers": ", ".join(REQUEST_HEADERS),
                "Access-Control-Max-Age": str(MAX_AGE_S),
            }
        )
    return Response(status_code=204, headers=answer)


def _vary_origin(response: Response) -> None:
    vary = response.headers.get("Vary")
    if not vary:
        response.headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        response.headers["Vary"] = f"{vary}, Origin"
