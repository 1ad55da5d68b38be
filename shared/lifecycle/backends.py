"""Checks of a registered ``backend_url``: is it Triton's gRPC endpoint, and does it serve the model?

Only backends that BACKEND_ALLOWLIST allows are ever contacted (the registry checks that
first), so registration cannot be used to scan ports, and the answers name the backend by
its registry identity, never with a transport error's text. A backend that does not answer
right now is not an error (it may be scaling from zero), nor is one that serves neither the
model nor has it in the model repository (its files may be deployed next, as in the original
platform, whose registry is metadata): the registration succeeds with a warning that says
what to fix. One that answers but not as Triton gRPC (its HTTP port, say) is a 400.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from shared.backends.triton import error_parts
from shared.endpoints import backend_id, resolve
from shared.errors import InvalidInput
from shared.lifecycle import repository
from shared.lifecycle.repository import Layout

if TYPE_CHECKING:
    from shared.backends.triton_async import AsyncTriton
    from shared.clients.aio import LoopThread
    from shared.domain import ModelVersion
    from shared.lifecycle.replicas import Replicas
    from shared.registry.rules import NewModel
    from shared.settings import Settings

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S, CALL_TIMEOUT_S, RETRY_AFTER_S = 1.0, 3.0, 0.2
# What gRPC says of a peer that speaks another protocol (Triton's HTTP or metrics port, S3...): the
# connection closes at once, or its first frame is not HTTP/2's.
OTHER_PROTOCOL = ("Socket closed", "Failed parsing HTTP/2", "http1", "HTTP/1")


class BackendAdmin:
    """Checks a registration's backends and wakes the backends of a pushed version."""

    def __init__(
        self, s3: Any, triton_async: AsyncTriton, loop: LoopThread, replicas: Replicas, settings: Settings
    ) -> None:
        self.s3 = s3
        self.triton_async = triton_async
        self.loop = loop
        self.replicas = replicas
        self.settings = settings

    def check_registration(self, row: NewModel | ModelVersion) -> list[str]:
        """Warnings for a registration of files Kinfer does not manage; InvalidInput for a backend
        that is not Triton."""
        settings = self.settings
        if not settings.check_backends:
            return []
        urls = list(row.get("backend_urls") or [])
        field = "backend_url" if len(urls) <= 1 else "backend_urls"
        if not urls:
            if not settings.probe_triton_url:
                return []  # TRITON_URL may be scaled to zero: a check would wake it
            urls = [settings.triton_url]
        cold = {backend_id(url) for url in settings.probe_skip_backends}  # scaled to zero: a check would wake it
        backends = dict.fromkeys(resolve(url, settings.triton_url) for url in urls)
        return [
            w
            for backend in backends
            if backend_id(backend) not in cold and (w := self._check(backend, row["triton_model"], field))
        ]

    def _check(self, backend: str, triton_model: str, field: str) -> str | None:
        own = backend == backend_id(self.settings.triton_url)
        host, _, port = backend.rpartition(":")
        if not port.isascii() or not port.isdigit():
            raise InvalidInput(f"{field} {backend!r} needs a port (Triton's gRPC port, 8001 by default)", field=field)
        try:
            with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError:
            return (
                f"backend {backend} does not answer right now; {triton_model!r} is registered but "
                "serves only once it does"
            )
        for attempt in (1, 2):  # one retry: a channel that was reconnecting is not a wrong endpoint
            try:
                names = self.loop.run(self.triton_async.served_models(backend, CALL_TIMEOUT_S))
                break
            except Exception as exc:  # grpc errors: the text stays in the log
                status, text = error_parts(exc)
                log.info(
                    "backend %s did not answer as Triton gRPC (try %d): %s %s", backend, attempt, status, text[:200]
                )
                if attempt == 1:
                    time.sleep(RETRY_AFTER_S)
                    continue
                if own or not any(sign in text for sign in OTHER_PROTOCOL):
                    return (
                        f"backend {backend} did not answer as Triton right now; {triton_model!r} is registered but "
                        "serves only once it does"
                    )
                raise InvalidInput(
                    f"{field} {backend} answers, but not as Triton's gRPC endpoint (is it the HTTP port? "
                    "Triton serves gRPC on 8001 by default)",
                    field=field,
                    code="backend_not_triton",
                ) from None
        served = sorted(set(names) - {""})
        if triton_model in served:
            return None
        layout = Layout.of(self.settings)
        if repository.holds_anything(self.s3, layout, triton_model):
            return None  # in the model repository: the backend's model agent loads it
        listed = ", ".join(served[:10]) + (", ..." if len(served) > 10 else "") if served else "no model"
        return (
            f"Triton at {backend} does not serve {triton_model!r} (it serves {listed}), and the model repository "
            f"holds no {triton_model!r}: inference answers 502 model_not_loaded until it does; push the model "
            "file instead (kinfer models push) or set triton_model"
        )

    def wake(self, model: ModelVersion, timeout: float = 30.0) -> None:
        """Ask each backend of a pushed version whether it is live, in the background and ignoring the answer.

        A Triton that scaled to zero has no model agent to load the version; a request through
        Knative's activator starts a replica, whose agent then loads every pending version. Nothing
        calls Triton on a timer: this is one request per push.
        """

        # A cold start may take longer than the wait: the activator still scales the backend up.
        for url in self.replicas.backends_of(model):
            self.loop.spawn(self.triton_async.server_live(url, timeout), "wake of a Triton backend")
