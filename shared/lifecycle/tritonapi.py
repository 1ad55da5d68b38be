"""Triton's HTTP model repository API, as the model agent uses it on localhost: index, load, unload.

Explicit model control: Triton loads and unloads only when told. A load of a model that is
already loaded reloads it from its folder; Triton keeps serving the versions it had while it
loads and keeps them when the load fails, and it answers a failed load with the reason
(``_reason`` keeps its first line, without the repository path noise).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

LOAD_TIMEOUT_S = 900.0


class TritonUnreachable(RuntimeError):
    """The local Triton did not answer its repository API."""


class TritonRepositoryApi:
    """Triton's HTTP model repository API on localhost (index, load, unload)."""

    def __init__(self, base_url: str, admin_header: str = "", admin_key: str = "") -> None:
        """``admin_header``/``admin_key``: what Triton's restricted model-repository API asks for (both or none)."""
        self.base_url = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if admin_header and admin_key:
            self.headers[admin_header] = admin_key

    def _post(self, path: str, timeout: float) -> tuple[int, str]:
        request = urllib.request.Request(self.base_url + path, data=b"{}", method="POST", headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            raise TritonUnreachable(f"Triton at {self.base_url} does not answer: {type(exc).__name__}") from exc

    def live(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/v2/health/live", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def loaded(self) -> dict[str, set[int]]:
        """{model: versions READY} (models in the repository but not loaded map to an empty set)."""
        status, body = self._post("/v2/repository/index", 10)
        if status != 200:
            raise TritonUnreachable(f"Triton's repository index answered {status}")
        out: dict[str, set[int]] = {}
        for entry in json.loads(body or "[]"):
            versions = out.setdefault(entry.get("name", ""), set())
            if entry.get("state") == "READY" and str(entry.get("version", "")).isdigit():
                versions.add(int(entry["version"]))
        return out

    def load(self, model: str) -> str | None:
        """Load (or reload) ``model`` from the repository folder; None, or Triton's reason for failing."""
        status, body = self._post(f"/v2/repository/models/{model}/load", LOAD_TIMEOUT_S)
        return None if status == 200 else _reason(body)

    def unload(self, model: str) -> str | None:
        status, body = self._post(f"/v2/repository/models/{model}/unload", 60)
        return None if status == 200 else _reason(body)


def _reason(body: str) -> str:
    """Triton's load error, first line, without the local repository path noise."""
    try:
        text = str(json.loads(body).get("error", body))
    except ValueError:
        text = body
    if " state: " in text:
        text = text.split(" state: ", 1)[1]
    return text.strip().splitlines()[0][:500] if text.strip() else "Triton gave no reason"
