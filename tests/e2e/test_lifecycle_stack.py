"""The model lifecycle on the running local stack, as the README walks it: ``kinfer models push`` a file
through the gateway, infer, split traffic, promote, roll back, all with the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, http
from tests.lifecycle_support import linear_onnx, write

pytestmark = pytest.mark.e2e


def kinfer_models(stack: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "models", *args, "--url", stack["gateway"], "--key", stack["key"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def infer(
    stack: dict[str, str], name: str, x: float, version: str | None = None, route_key: str | None = None
) -> tuple[int, dict, dict]:
    body = {"model": name, "input": {"data": [x]}, **({"version": version} if version else {})}
    headers = {"X-Route-Key": route_key} if route_key else None
    return http("POST", f"{stack['gateway']}/v1/infer", body, key=stack["key"], headers=headers)


def test_push_infer_canary_promote_rollback(stack: dict[str, str], tmp_path: Path) -> None:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    v1, v2 = write(tmp_path / "v1.onnx", linear_onnx(2.0)), write(tmp_path / "v2.onnx", linear_onnx(3.0))
    pushed = kinfer_models(stack, "push", str(v1), "--name", name, "--version", "1", "--alias", "production")
    assert pushed.returncode == 0, pushed.stderr
    assert "ready" in pushed.stdout and "alias production -> 1" in pushed.stdout
    status, body, headers = infer(stack, name, 4.0)
    assert status == 200 and body["outputs"]["y"] == [8.0] and headers["X-Model-Version"] == "1"
    assert kinfer_models(stack, "push", str(v2), "--name", name, "--version", "2", "--wait").returncode == 0
    assert infer(stack, name, 4.0)[1]["version"] == "1", "a new version does not take production by itself"
    assert infer(stack, name, 4.0, "2")[1]["outputs"]["y"] == [12.0]
    split = kinfer_models(stack, "split", name, "1=80", "2=20")
    assert split.returncode == 0 and "1=80%, 2=20%" in split.stdout, split.stderr
    seen = Counter(infer(stack, name, 1.0, route_key=f"user-{i}")[1]["version"] for i in range(200))
    assert seen["1"] > seen["2"] > 0, seen
    assert kinfer_models(stack, "promote", name, "2").returncode == 0
    # Each serving process keeps a resolution fresh for MODEL_TTL_S and may answer from it for MODEL_STALE_S
    # more while it refreshes (shared.inference.resolve): a move is seen within about 1.3 s.
    moved_at, answered = time.monotonic(), "1"
    while answered != "2" and time.monotonic() - moved_at < 5:
        answered = infer(stack, name, 1.0)[1]["version"]
        time.sleep(0.05)
    assert answered == "2" and time.monotonic() - moved_at < 2.0, "the promote was not seen within 2 s"
    rolled = kinfer_models(stack, "rollback", name)
    assert rolled.returncode == 0 and "1=80%, 2=20%" in rolled.stdout, rolled.stdout + rolled.stderr
    shown = kinfer_models(stack, "show", name)
    assert "alias production -> 1=80%, 2=20%" in shown.stdout and "ready" in shown.stdout
    one = json.loads(kinfer_models(stack, "show", name, "2", "-o", "json").stdout)
    assert one["triton_version"] == 2 and one["backends"]["127.0.0.1:8001"]["loaded"] == 1
    refused = kinfer_models(stack, "delete", name, "1")
    assert refused.returncode == 1 and refused.stderr.startswith("error: version_aliased: ")
    assert "HTTP 409, request id " in refused.stderr and f"kinfer models delete-alias {name} ALIAS" in refused.stderr
    versions = kinfer_models(stack, "versions", name)
    assert versions.returncode == 0 and "production (80%)" in versions.stdout, versions.stderr
    aliases = kinfer_models(stack, "aliases", name, "-o", "json")
    assert [a["alias"] for a in json.loads(aliases.stdout)["aliases"]] == ["production"], aliases.stderr
    listed = kinfer_models(stack, "list", "--name", name)
    assert listed.returncode == 0 and [line.split()[1] for line in listed.stdout.splitlines()[1:]] == ["2", "1"]


def test_a_bad_file_is_refused_and_leaves_nothing_behind(stack: dict[str, str], tmp_path: Path) -> None:
    name = f"e2e-bad-{uuid.uuid4().hex[:8]}"
    bad = write(tmp_path / "broken.onnx", b"not a model at all")
    run = kinfer_models(stack, "push", str(bad), "--name", name, "--version", "1")
    assert run.returncode == 1 and "not an ONNX model" in run.stderr, run.stderr
    status, body, _ = http("GET", f"{stack['gateway']}/v1/models?name={name}", key=stack["key"])
    assert status == 200 and body["total"] == 0, "the push deleted the version it had registered"


def test_the_demo_models_are_served_by_the_agent(stack: dict[str, str]) -> None:
    status, body, _ = http("GET", f"{stack['gateway']}/v1/models/by-name/iris_classifier/1", key=stack["key"])
    assert status == 200 and body["state"] == "ready" and body["repository_uri"], body
    status, agent, _ = http("GET", "http://127.0.0.1:8089/status")
    assert status == 200 and agent["synced"] and "iris_classifier" in agent["loaded"]
