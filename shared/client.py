"""A Python client of the Kinfer HTTP API: ``Client(url, key)`` for notebooks and applications.

::

    from shared.client import ApiError, Client

    kinfer = Client("http://127.0.0.1:8080", "demo-token")
    answer = kinfer.infer("iris", [[5.1, 3.5, 1.4, 0.2]])          # answer["prediction"] == ["setosa"]
    job = kinfer.batch.submit("iris", [{"data": [5.1, 3.5, 1.4, 0.2]}])
    rows = kinfer.batch.results(kinfer.batch.wait(job["job_id"])["job_id"])

It speaks through the ``kinfer`` command's own client (``shared.cli.api``: the standard library only, a
timeout on every call), so a failure is the CLI's one exception, ``ApiError``: ``status`` (None when the
API could not be reached), ``code``, ``message``, ``field``, ``request_id`` and a ``hint``. Answers are
the API's JSON bodies, typed with the platform's own ``TypedDict``s (``InferAnswer``, ``BatchJob``,
``ModelVersion``...): dicts at run time, checked by mypy.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from shared.cli.api import Client as _Http
from shared.cli.api import Connection, unreachable
from shared.cli.errors import ApiError

if TYPE_CHECKING:
    from shared.batch.jobs import JobSummary
    from shared.batch.requests import Accepted, RequestStatus
    from shared.domain import BatchJob, ModelVersion
    from shared.inference.dataplane import InferAnswer
    from shared.lifecycle.aliases import Alias
    from shared.registry.reads import ModelPage

__all__ = ["ApiError", "Client"]

FINISHED_JOB = ("completed", "failed", "cancelled")
FINISHED_REQUEST = ("succeeded", "failed")
TIMEOUT_S = 60.0


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _input(data: object | None, inputs: dict[str, object] | None) -> dict[str, object]:
    if (data is None) == (inputs is None):
        raise ApiError("give data (one input tensor) or inputs (by tensor name), not both", code="invalid_input")
    return {"data": data} if inputs is None else dict(inputs)


def _poll(read: Any, field: str, done: tuple[str, ...], timeout: float, interval: float, what: str) -> Any:
    """``read()`` until its ``field`` is one of ``done``; ApiError code ``timeout`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if found[field] in done:
            return found
        if time.monotonic() > deadline:
            raise ApiError(f"{what} still {found[field]} after {timeout:.0f}s", code="timeout")
        time.sleep(interval)


class Client:
    """The Kinfer API at ``url`` with the API key ``key``; ``batch`` and ``models`` group their calls."""

    def __init__(self, url: str, key: str, *, timeout: float = TIMEOUT_S) -> None:
        self._http = _Http(Connection(url, key, key_source="Client(url, key)"))
        self.timeout = timeout
        self.batch = Batch(self)
        self.models = Models(self)

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """Any API call: the decoded JSON answer; ``ApiError`` otherwise."""
        return self._http.call(method, path, body, timeout=kwargs.pop("timeout", self.timeout), **kwargs)

    # -- real-time inference -----------------------------------------------------------
    def infer(
        self,
        model: str,
        data: object | None = None,
        *,
        inputs: dict[str, object] | None = None,
        version: str | None = None,
    ) -> InferAnswer:
        """``POST /v1/infer``: ``data`` for a single-input model, or ``inputs`` by tensor name; ``version`` a
        version or an alias (default: alias ``production``, else the newest active version)."""
        body: dict[str, object] = {"model": model, "input": _input(data, inputs)}
        if version is not None:
            body["version"] = version
        return cast("InferAnswer", self.call("POST", "/v1/infer", body))

    def infer_async(
        self,
        model: str,
        data: object | None = None,
        *,
        inputs: dict[str, object] | None = None,
        version: str | None = None,
        callback_url: str | None = None,
    ) -> Accepted:
        """``POST /v1/infer`` with ``Prefer: respond-async``: the accepted request (``id``; follow it with
        ``request`` or ``wait_request``), signed to ``callback_url`` when given."""
        body: dict[str, object] = {"model": model, "input": _input(data, inputs)}
        if version is not None:
            body["version"] = version
        headers = {"Prefer": "respond-async"}
        if callback_url is not None:
            headers["Kinfer-Callback-URL"] = callback_url
        return cast("Accepted", self.call("POST", "/v1/infer", body, headers=headers))

    def request(self, request_id: str) -> RequestStatus:
        """``GET /v1/requests/{id}``: an async request's status, then its ``result`` or ``error``."""
        return cast("RequestStatus", self.call("GET", f"/v1/requests/{request_id}"))

    def wait_request(self, request_id: str, timeout: float = 300, interval: float = 0.2) -> RequestStatus:
        """Poll an async request until it succeeded or failed; ``ApiError`` code ``timeout`` otherwise."""
        found = _poll(
            lambda: self.request(request_id), "status", FINISHED_REQUEST, timeout, interval, f"request {request_id}"
        )
        return cast("RequestStatus", found)


class Batch:
    """Batch jobs: ``submit``, ``status``, ``wait``, ``results``, ``cancel``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def submit(self, model: str, inputs: list[object], *, version: str | None = None) -> JobSummary:
        """``POST /v1/batch`` with the items inline (``[{"data": [...]}, ...]``); the job (202)."""
        body: dict[str, object] = {"model": model, "inputs": inputs}
        if version is not None:
            body["version"] = version
        return cast("JobSummary", self._client.call("POST", "/v1/batch", body))

    def status(self, job_id: str) -> BatchJob:
        return cast("BatchJob", self._client.call("GET", f"/v1/batch/{job_id}"))

    def cancel(self, job_id: str) -> BatchJob:
        return cast("BatchJob", self._client.call("DELETE", f"/v1/batch/{job_id}"))

    def wait(self, job_id: str, timeout: float = 600, interval: float = 0.5) -> BatchJob:
        """Poll a job until it completed, failed or was cancelled; ``ApiError`` code ``timeout`` otherwise."""
        found = _poll(lambda: self.status(job_id), "status", FINISHED_JOB, timeout, interval, f"job {job_id}")
        return cast("BatchJob", found)

    def results(self, job_id: str) -> list[dict[str, Any]]:
        """The result rows of a finished job (``index``, ``prediction``, ``outputs`` or ``error``), in order."""
        url = self.status(job_id).get("result_url")
        if not url:
            raise ApiError(f"job {job_id} has no results yet", code="not_finished")
        try:
            with urllib.request.urlopen(url, timeout=300) as response:  # presigned: no key is sent
                return [json.loads(line) for line in response.read().splitlines() if line.strip()]
        except (urllib.error.URLError, OSError) as exc:
            raise unreachable(url.split("?")[0], exc) from None


class Models:
    """The model registry: ``list``, ``show``, ``alias``, ``push``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, *, name: str | None = None, limit: int = 100, offset: int = 0) -> ModelPage:
        """``GET /v1/models``: a page of versions, newest first (``name`` filters)."""
        query = {"name": name, "limit": limit, "offset": offset}
        return cast("ModelPage", self._client.call("GET", "/v1/models", query=query))

    def show(self, name: str, version: str) -> ModelVersion:
        """One version of ``name``; ``version`` may be an alias (``production``), read through the aliases
        endpoint: the version it points at. An alias split between versions is an ``ApiError`` (code
        ``alias_split``) that names them: show one of them, or read the split with ``alias``."""
        from shared.registry.rules import VERSION

        if not VERSION.fullmatch(version):
            target = self.alias(name, version)["versions"]
            if len(target) > 1:
                split = ", ".join(f"{v}={w}%" for v, w in target.items())
                raise ApiError(
                    f"alias {version!r} of model {name!r} is split between versions: {split}",
                    code="alias_split",
                    hint="show one of them: models.show(name, VERSION); models.alias(name, alias) reads the split",
                )
            version = next(iter(target))
        path = f"/v1/models/by-name/{_quote(name)}/{_quote(version)}"
        return cast("ModelVersion", self._client.call("GET", path))

    def alias(self, name: str, alias: str) -> Alias:
        """``GET /v1/models/by-name/{name}/aliases/{alias}``: the versions it points at, with their weights."""
        return cast("Alias", self._client.call("GET", f"/v1/models/by-name/{_quote(name)}/aliases/{_quote(alias)}"))

    def push(
        self, file: str | Path, name: str, version: str, *, wait: bool = True, timeout: float = 300
    ) -> ModelVersion:
        """Upload ``file`` (``model.onnx``, or a ``.tar.gz`` Triton model folder) as ``name``/``version``,
        as ``kinfer models push`` does; with ``wait``, poll until the version is ready (or failed)."""
        from shared.cli.models import Api
        from shared.cli.models import push as push_file

        path = Path(file)
        if not path.is_file():
            raise ApiError(f"{path} is not a file; nothing was pushed", code="invalid_input", field="file")
        http = self._client._http.connection
        pushed = push_file(Api(http.url, http.key), path, name, version, show_progress=False)
        if not wait:
            return pushed
        found = _poll(
            lambda: self._client.call("GET", f"/v1/models/{pushed['id']}"),
            "state",
            ("ready", "failed"),
            timeout,
            0.25,
            f"model {name} {version}",
        )
        return cast("ModelVersion", found)
