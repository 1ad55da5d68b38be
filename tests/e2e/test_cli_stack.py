"""`kinfer infer` and `kinfer keys` through the gateway of the running local stack, with the connection
taken from the environment (KINFER_URL / KINFER_API_KEY) as a deployed platform's users would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, http

pytestmark = pytest.mark.e2e


def kinfer(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KINFER_")}
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "XDG_CONFIG_HOME": str(tmp_path), **env},
    )


def test_infer_answers_and_errors_in_one_line(stack: dict[str, str], tmp_path: Path) -> None:
    env = {"KINFER_URL": stack["gateway"], "KINFER_API_KEY": stack["key"]}
    done = kinfer(tmp_path, "infer", "iris_classifier", "--data", "[6.7, 3.0, 5.2, 2.3]", "-o", "json", **env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    answer = json.loads(done.stdout)
    assert answer["prediction"] == "virginica" and answer["trace_id"] and answer["request_id"]
    done = kinfer(tmp_path, "infer", "iris_classifier", "--file", str(ROOT / "examples" / "iris-rows.json"), **env)
    assert done.returncode == 0 and "prediction:  setosa,virginica,versicolor" in done.stdout
    missing = kinfer(tmp_path, "infer", f"no-such-{uuid.uuid4().hex[:6]}", "--data", "[1]", **env)
    assert missing.returncode == 1 and missing.stderr.startswith("error: not_found: ") and "HTTP 404" in missing.stderr
    shape = kinfer(tmp_path, "infer", "iris_classifier", "--data", "[1, 2]", **env)
    assert shape.returncode == 1 and shape.stderr.startswith("error: invalid_input: ")
    assert "expected 'features'" in shape.stderr and "request id " in shape.stderr
    usage = kinfer(tmp_path, "infer", "iris_classifier", "--data", "[1, 2", **env)
    assert usage.returncode == 2 and "--data is not valid JSON" in usage.stderr


def test_keys_over_the_gateway_and_a_new_key_at_work(stack: dict[str, str], tmp_path: Path) -> None:
    env = {"KINFER_URL": stack["gateway"], "KINFER_API_KEY": stack["key"]}
    created = kinfer(
        tmp_path, "keys", "create", "--name", f"e2e-{uuid.uuid4().hex[:6]}", "--scopes", "infer", "-o", "json", **env
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    mine = {"KINFER_URL": stack["gateway"], "KINFER_API_KEY": key["key"]}
    assert kinfer(tmp_path, "infer", "iris_classifier", "--data", "[5.1, 3.5, 1.4, 0.2]", **mine).returncode == 0
    denied = kinfer(tmp_path, "keys", "list", **mine)
    assert denied.returncode == 1 and denied.stderr.startswith("error: forbidden: ") and "HTTP 403" in denied.stderr
    assert kinfer(tmp_path, "keys", "revoke", key["id"], **env).returncode == 0
    status, _, headers = http("GET", f"{stack['gateway']}/v1/keys/{key['id']}", key=stack["key"])
    assert status == 200 and headers["Content-Type"] == "application/json"


def test_a_remote_url_without_a_key_never_gets_the_dev_key(stack: dict[str, str], tmp_path: Path) -> None:
    done = kinfer(tmp_path, "batch", "list", KINFER_URL="https://kinfer.invalid")
    assert done.returncode == 2 and "no API key for https://kinfer.invalid" in done.stderr
    local_url = stack["gateway"].replace("127.0.0.1", "localhost")
    local = kinfer(tmp_path, "batch", "list", "-o", "json", KINFER_URL=local_url)
    assert local.returncode == 0 and "dev key demo-token" in local.stderr
    assert isinstance(json.loads(local.stdout)["jobs"], list)
