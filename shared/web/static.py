"""Static files of a web page (the console), served from one folder with a browser's safety headers.

The folder is read once, on first use: only the regular files found there (no links, no dot files,
the types of ``TYPES`` only) can ever be answered, looked up by their exact relative name, so a request path
cannot leave the folder whatever it spells (``..``, encoded slashes, absolute paths): any name that
is not one of those files is a JSON 404. Every answer, errors included, carries ``SECURITY_HEADERS``:
a Content-Security-Policy that allows scripts, styles and connections to this origin only (no inline
code, no framing), ``nosniff``, no referrer. Files are revalidated on each use (``no-cache`` with a
strong ETag, 304 when unchanged): there is no build step to give them versioned names.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from starlette.responses import Response

from shared.errors import NotFound

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
MAX_NAME = 200


@dataclass(frozen=True)
class File:
    body: bytes
    content_type: str
    etag: str


class StaticFiles:
    """The files of ``folder`` by relative POSIX name; ``index`` answers the empty name."""

    def __init__(self, folder: Path, index: str = "index.html") -> None:
        self.folder = folder
        self.index = index
        self._files: dict[str, File] | None = None
        self._lock = threading.Lock()

    def files(self) -> dict[str, File]:
        if self._files is None:
            with self._lock:
                if self._files is None:
                    self._files = _scan(self.folder)
        return self._files

    def answer(self, name: str, if_none_match: str | None = None) -> Response:
        """200 with the file (or 304 when ``if_none_match`` names its ETag); NotFound for any other name."""
        found = self.files().get(name or self.index) if len(name) <= MAX_NAME else None
        if found is None:
            raise NotFound(f"no file {name[:MAX_NAME]!r} in the console")
        headers = {"ETag": found.etag, "Cache-Control": "no-cache"}
        if if_none_match and found.etag in (tag.strip() for tag in if_none_match.split(",")):
            return Response(status_code=304, headers=headers)
        return Response(found.body, status_code=200, headers=headers, media_type=found.content_type)


def _scan(folder: Path) -> dict[str, File]:
    found: dict[str, File] = {}
    root = folder.resolve()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_symlink() or not path.is_file() or any(p.startswith(".") for p in relative.parts):
            continue
        content_type = TYPES.get(path.suffix.lower())
        if content_type is None:
            continue
        body = path.read_bytes()
        found[relative.as_posix()] = File(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    return found


def secure(response: Response) -> Response:
    """``response`` with the page's security headers (set, replacing any of the same name)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response
