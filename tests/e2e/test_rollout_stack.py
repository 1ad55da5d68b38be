"""Shadow versions and automatic rollouts on the running local stack, under load, with the real CLI: a shadow
version is mirrored and compared without touching the answers; a candidate that fails a fifth of its requests
is rolled back by its gate with no more failed requests than the gate's budget allows for; a good candidate
is promoted to 100 %; every decision is in the audit log with its figures."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter

import pytest

from tests.e2e.conftest import http
from tests.e2e.test_lifecycle_stack import kinfer_models
from tests.lifecycle_support import PY_CONFIG, linear_onnx, package, write

pytestmark = pytest.mark.e2e

# A candidate that raises on a fifth of its inputs (x < 0.2): same signature as the ONNX versions.
FLAKY_MODEL = """
import numpy as np
class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb
        self.pb = pb
    def execute(self, requests):
        pb, out = self.pb, []
        for r in requests:
            x = pb.get_input_tensor_by_name(r, "x").as_numpy()
            if (x < 0.2).any():
                out.append(pb.InferenceResponse(error=pb.TritonError("this candidate fails below 0.2")))
            else:
                out.append(pb.InferenceResponse(output_tensors=[pb.Tensor("y", (x * 2.0).astype(np.float32))]))
        return out
"""
LOAD_CAP_S = 90  # a safety stop for the load loop, never asserted on


class Load:
    """Two callers sending requests through the alias until told to stop; every answer's status counted."""

    def __init__(self, stack: dict[str, str], name: str) -> None:
        self.stack, self.name = stack, name
        self.statuses: Counter[int] = Counter()
        self.codes: Counter[str] = Counter()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(2)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            body = {"model": self.name, "version": "production", "input": {"data": [rng.random()]}}
            headers = {"X-Route-Key": f"caller-{rng.randrange(10**9)}"}
            status, answer, _ = http("POST", f"{self.stack['gateway']}/v1/infer", body, self.stack["key"], headers)
            self.statuses[status] += 1
            if status != 200:
                self.codes[answer.get("code", "?") if isinstance(answer, dict) else "?"] += 1
            time.sleep(0.03)

    def until(self, done: object) -> dict:
        for t in self.threads:
            t.start()
        deadline, state = time.monotonic() + LOAD_CAP_S, {}
        try:
            while time.monotonic() < deadline:
                state = done()  # type: ignore[operator]
                if state["state"] != "running":
                    break
                time.sleep(0.2)
        finally:
            self.stop.set()
            for t in self.threads:
                t.join()
        return state


def rollout(stack: dict[str, str], name: str) -> dict:
    status, body, _ = http(
        "GET", f"{stack['gateway']}/v1/models/by-name/{name}/aliases/production/rollout", key=stack["key"]
    )
    assert status == 200, body
    return body


def alias(stack: dict[str, str], name: str) -> dict:
    return http("GET", f"{stack['gateway']}/v1/models/by-name/{name}/aliases/production", key=stack["key"])[1]


@pytest.fixture(scope="module")
def loaded(stack: dict[str, str]) -> dict[str, str]:
    """The stack with an admin key of its own whose rate limit load cannot reach (the dev key has 600/min)."""
    body = {"name": f"gates-{uuid.uuid4().hex[:6]}", "scopes": ["admin", "infer"], "rate_limit_per_minute": 1_000_000}
    status, created, _ = http("POST", f"{stack['gateway']}/v1/keys", body, stack["key"])
    assert status == 201, created
    return {**stack, "key": created["key"]}


@pytest.fixture(scope="module")
def model(loaded: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    stack = loaded
    name, tmp = f"gate-{uuid.uuid4().hex[:8]}", tmp_path_factory.mktemp("gates")
    files = {
        "1": write(tmp / "v1.onnx", linear_onnx(2.0)),
        "2": write(tmp / "v2.onnx", linear_onnx(2.0)),
        "3": write(tmp / "v3.tar.gz", package({"config.pbtxt": PY_CONFIG, "1/model.py": FLAKY_MODEL})),
    }
    for version, file in files.items():
        extra = ["--alias", "production"] if version == "1" else []
        pushed = kinfer_models(stack, "push", str(file), "--name", name, "--version", version, "--wait", *extra)
        assert pushed.returncode == 0, pushed.stderr
    return name


def test_a_shadow_version_is_mirrored_and_compared_without_touching_the_answers(
    loaded: dict[str, str], model: str
) -> None:
    stack = loaded
    shadow = kinfer_models(stack, "shadow", model, "production", "3", "100")
    assert shadow.returncode == 0 and "shadow 3=100%" in shadow.stdout, shadow.stderr
    time.sleep(1.5)  # resolutions are cached for up to MODEL_TTL_S + MODEL_STALE_S (shared.inference.resolve)
    answers = [
        http("POST", f"{stack['gateway']}/v1/infer", {"model": model, "input": {"data": [x / 10]}}, stack["key"])
        for x in range(10)
    ]
    assert [a[0] for a in answers] == [200] * 10, "the shadow's failures never reach a caller"
    assert {a[1]["version"] for a in answers} == {"1"}
    pairs: list[dict] = []
    for _ in range(50):  # tallies reach Redis about once a second
        pairs = json.loads(kinfer_models(stack, "shadow-status", model, "production", "-o", "json").stdout)["pairs"]
        if pairs and pairs[0]["mirrored"] >= 10:
            break
        time.sleep(0.2)
    [pair] = pairs
    assert (pair["primary"], pair["shadow"], pair["mirrored"]) == ("1", "3", 10)
    assert pair["errors"] == 2 and pair["agree"] == 8 and pair["agreement"] == 1.0  # x = 0.0 and 0.1 fail
    assert pair["max_abs_difference"] == 0.0 and pair["shadow_latency_ms"] > 0
    assert kinfer_models(stack, "shadow", model, "production", "3", "0").returncode == 0


def test_a_failing_candidate_is_rolled_back_by_its_gate_under_load(loaded: dict[str, str], model: str) -> None:
    stack = loaded
    min_requests, max_error_rate = 30, 0.1
    started = kinfer_models(
        stack, "rollout", "start", model, "3", "--steps", "20,50,100", "--min-requests", str(min_requests),
        "--min-step-s", "1", "--max-error-rate", str(max_error_rate), "--max-p99-ratio", "100", "-o", "json",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["percent"] == 20 and alias(stack, model)["versions"] == {"1": 80, "3": 20}
    load = Load(stack, model)
    final = load.until(lambda: rollout(stack, model))
    assert final["state"] == "rolled_back" and "error rate gate" in final["reason"], final
    assert alias(stack, model)["versions"] == {"1": 100}
    failed = sum(n for status, n in load.statuses.items() if status != 200)
    print(f"rollback: {dict(load.statuses)} {dict(load.codes)} {final['reason']} {final['figures']}")
    budget = int(max_error_rate * min_requests)  # errors a step may have before the gate acts
    # The gate acts on the first tally past its budget; requests already in flight, and those answered in the
    # second the tallies take to reach Redis plus one tick, fail too: at most a few more at two callers.
    assert failed <= budget + 12, (load.statuses, load.codes, final["figures"])
    assert set(load.codes) <= {"model_error", "backend_error"}, load.codes
    assert final["figures"]["candidate"]["errors"] > budget


def test_a_good_candidate_is_promoted_to_every_request(loaded: dict[str, str], model: str) -> None:
    stack = loaded
    started = kinfer_models(
        stack, "rollout", "start", model, "2", "--steps", "20,50,100", "--min-requests", "20",
        "--min-step-s", "1", "--max-error-rate", "0.05", "--max-p99-ratio", "100",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    load = Load(stack, model)
    final = load.until(lambda: rollout(stack, model))
    assert final["state"] == "promoted", final
    assert alias(stack, model)["versions"] == {"2": 100}
    assert set(load.statuses) == {200}, (load.statuses, load.codes)
    status, page, _ = http(
        "GET", f"{stack['gateway']}/v1/audit?action=rollout&model={model}&limit=50", key=stack["key"]
    )
    assert status == 200, page
    actions = [e["action"] for e in page["entries"]]
    assert actions[:3] == ["rollout.promote", "rollout.step", "rollout.start"], actions
    assert "rollout.rollback" in actions
    assert page["entries"][0]["after"]["figures"]["candidate"]["requests"] >= 20
