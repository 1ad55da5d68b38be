"""The whole local stack, as `kinfer up` starts it, for tests over HTTP on the real ports.

A stack that is already running and healthy is reused (and left running); otherwise
this starts one and stops it at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from requests.structures import CaseInsensitiveDict

ROOT = Path(__file__).resolve().parents[2]
KINFER = [sys.executable, "-m", "shared.cli"]


def _kinfer(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KINFER, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, str]]:
    reused = _kinfer("status").returncode == 0
    if not reused:
        started = _kinfer("up")
        if started.returncode != 0:
            pytest.fail(f"kinfer up failed:\n{started.stdout}\n{started.stderr}", pytrace=False)
    yield {
        "gateway": "http://127.0.0.1:8080",
        "backends": "http://127.0.0.1:8081",
        "infer": "http://127.0.0.1:8082",
        "models": "http://127.0.0.1:8083",
        "key": "demo-token",
    }
    if not reused:
        _kinfer("down")


def http(
    method: str, url: str, body: Any = None, key: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if key:
        all_headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, _decode(raw), CaseInsensitiveDict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        return exc.code, _decode(exc.read()), CaseInsensitiveDict(exc.headers.items())


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")
