"""Static files (``shared.web.static``) and the console function that serves them: only the files of
its folder, by exact name, with the page's security headers on every answer, errors in JSON."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from shared.errors import NotFound
from shared.web.static import CSP, StaticFiles
from tests.conftest import ROOT, function_client

STATIC = ROOT / "functions" / "console" / "static"


@pytest.fixture(scope="module")
def client() -> Any:
    return function_client("console", "serve_console")


def _secure(resp: Any) -> None:
    csp = resp.headers["Content-Security-Policy"]
    assert csp == CSP and "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"


def test_the_page_and_its_files_are_served_with_types_and_security_headers(client: Any) -> None:
    page = client.get("/console/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>Kinfer console</title>" in page.text
    _secure(page)
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        resp = client.get(f"/console/{name}")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(kind), name
        assert resp.content == (STATIC / name).read_bytes()
        assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["ETag"]
        _secure(resp)


def test_the_page_has_no_inline_script_or_style_and_loads_nothing_from_elsewhere() -> None:
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline <script>"
    assert "<style" not in html and " style=" not in html and not re.search(r"\son[a-z]+=", html)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "a resource from another origin"
    script = (STATIC / "app.js").read_text()
    assert ".innerHTML" not in script and "outerHTML" not in script and "insertAdjacentHTML" not in script
    assert "eval(" not in script and "document.write" not in script
    assert "localStorage" not in script, "the key belongs in sessionStorage only"


def test_console_redirects_to_the_folder_url(client: Any) -> None:
    for path in ("/console", "/"):
        resp = client.get(path, follow_redirects=False)
        assert resp.status_code == 308 and resp.headers["location"] == "/console/", path
        _secure(resp)


def test_an_unchanged_file_answers_304(client: Any) -> None:
    first = client.get("/console/app.js")
    again = client.get("/console/app.js", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == first.headers["ETag"]
    other = client.get("/console/app.js", headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.content == first.content


@pytest.mark.parametrize(
    "path",
    [
        "/console/nope.js",
        "/console/../main.py",
        "/console/%2e%2e/main.py",
        "/console/..%2fmain.py",
        "/console/static/app.js",
        "/console//etc/passwd",
        "/console/app.js/",
        "/console/" + "a" * 300,
        "/console/%2fetc%2fpasswd",
        "/console/.hidden",
        "/console/main.py",
    ],
)
def test_unknown_names_and_traversal_are_a_json_404(client: Any, path: str) -> None:
    resp = client.get(path)
    if resp.status_code == 200:  # a client may normalise "/console/app.js/" to the file itself
        assert path.rstrip("/").endswith("app.js") and resp.content == (STATIC / "app.js").read_bytes()
        return
    assert resp.status_code == 404, (path, resp.status_code)
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["code"] == "not_found" and body["request_id"] and "Traceback" not in resp.text
    assert "def serve_console" not in resp.text
    _secure(resp)


def test_writes_are_refused_with_allow(client: Any) -> None:
    resp = client.post("/console/app.js", content=b"x")
    assert resp.status_code == 405 and "GET" in resp.headers["Allow"] and resp.json()["code"] == "method_not_allowed"


def test_the_console_needs_no_key_and_reports_health(client: Any) -> None:
    resp = client.get("/health")
    assert resp.status_code == 200 and resp.json()["status"] == "healthy" and resp.json()["files"] >= 4


def test_static_files_serve_only_regular_visible_files_of_known_types(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>home</p>")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.css").write_text("p{}")
    (tmp_path / ".env").write_text("SECRET=1")
    (tmp_path / "notes.bin").write_bytes(b"\0")
    outside = tmp_path.parent / f"outside-{tmp_path.name}.txt"
    outside.write_text("outside")
    os.symlink(outside, tmp_path / "link.txt")
    files = StaticFiles(tmp_path)
    assert sorted(files.files()) == ["index.html", "sub/a.css"]
    assert files.answer("").body == b"<p>home</p>"
    assert files.answer("sub/a.css").media_type == "text/css; charset=utf-8"
    for name in (".env", "link.txt", "notes.bin", "../" + outside.name, "sub/../index.html", "/index.html", "sub"):
        with pytest.raises(NotFound):
            files.answer(name)
