"""A whole model lifecycle on real services: the S3 server, a Triton started empty in explicit
model-control mode, the model agent beside it (a thread of this process), PostgreSQL and Redis;
the models and infer functions driven in process."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.lifecycle.agent import ModelAgent
from shared.localstack.s3 import S3Server
from shared.localstack.triton import TritonServer, TritonStartError
from shared.services import reset_services
from tests.conftest import free_port, function_client


class Lifecycle:
    """The services of one test module; ``configure`` swaps settings, ``restart_agent`` the agent."""

    def __init__(self, base: Any, tmp: Path) -> None:
        self.uid = uuid.uuid4().hex[:8]
        self.tmp = tmp
        self.s3 = S3Server(port=free_port())
        self.s3.start()
        ports = [free_port() for _ in range(3)]
        self.repo = tmp / "repository"
        self.repo.mkdir()
        self.triton = TritonServer(self.repo, tmp / "triton", *ports, load_models=(), strict_readiness=False)
        try:
            self.triton.start(timeout=120)
        except TritonStartError as exc:
            self.s3.stop()
            pytest.fail(f"Triton could not start: {exc}", pytrace=False)
        self.base = base
        self.settings = self.configure()
        self.agent: ModelAgent | None = None
        self.thread: threading.Thread | None = None
        self.start_agent()
        self.models = function_client("models", "manage_models")
        self.infer_client = function_client("infer", "run_inference")

    def configure(self, **overrides: Any) -> Any:
        values = {
            "s3_endpoint_url": self.s3.url,
            "model_repository_uri": f"s3://models-{self.uid}/repo",
            "onnx_backend": "python",
            "triton_url": self.triton.grpc_url,
            "agent_triton_http": self.triton.http_url,
            "agent_repository_dir": str(self.repo),
            "agent_sync_s": 0.2,
            "agent_heartbeat_ttl_s": 3.0,
            "unload_grace_s": 1.0,
            "backend_allowlist": ("127.0.0.1:*",),
            "check_backends": True,
            "max_artifact_bytes": 5_000_000,
        }
        values.update(overrides)
        self.settings = dataclasses.replace(self.base, **values)
        reset_services(self.settings)
        return self.settings

    def services(self) -> Any:
        from shared.services import get_services

        return get_services()

    def start_agent(self) -> ModelAgent:
        svc = self.services()
        self.agent = ModelAgent(svc.registry, svc.replicas, svc.cache, svc.s3, svc.settings, replica=f"test-{self.uid}")
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()
        return self.agent

    def stop_agent(self) -> None:
        if self.agent is not None and self.thread is not None:
            self.agent.stop()
            self.thread.join(10)

    # -- API helpers --------------------------------------------------------------------------
    def register(self, name: str, version: str, **body: Any) -> dict[str, Any]:
        payload = {"name": name, "version": version, "framework": "onnx", "format": "onnx", "upload": True, **body}
        resp = self.models.post("/v1/models", json=payload)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def upload(self, model_id: str, data: bytes, **params: str) -> Any:
        return self.models.put(
            f"/v1/models/{model_id}/artifact",
            content=data,
            params=params,
            headers={"Content-Type": "application/octet-stream"},
        )

    def push(self, name: str, version: str, data: bytes, wait: bool = True, **body: Any) -> dict[str, Any]:
        created = self.register(name, version, **body)
        resp = self.upload(created["id"], data)
        assert resp.status_code == 200, resp.text
        return self.wait_state(created["id"]) if wait else dict(resp.json())

    def wait_state(
        self, model_id: str, states: tuple[str, ...] = ("ready", "failed"), timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            model = self.models.get(f"/v1/models/{model_id}").json()
            if model["state"] in states:
                return dict(model)
            if time.monotonic() > deadline:
                raise AssertionError(f"version still {model['state']} after {timeout}s: {model}")
            time.sleep(0.1)

    def infer(self, name: str, x: float, version: str | None = None, route_key: str | None = None) -> Any:
        body: dict[str, Any] = {"model": name, "input": {"data": [x]}}
        if version is not None:
            body["version"] = version
        headers = {"X-Route-Key": route_key} if route_key else {}
        return self.infer_client.post("/v1/infer", json=body, headers=headers)

    def stop(self) -> None:
        self.stop_agent()
        reset_services(None)
        self.triton.stop()
        self.s3.stop()


@pytest.fixture(scope="module")
def life(base_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    stack = Lifecycle(base_settings, tmp_path_factory.mktemp("lifecycle"))
    yield stack
    stack.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
