"""Batch on the running local stack: the CLI submits through the gateway, waits, downloads the results."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, http

pytestmark = pytest.mark.e2e


def kinfer_batch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "batch", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_submit_wait_and_results(stack: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "iris.jsonl"
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]] * 10 + [[]]
    source.write_text("".join(json.dumps({"data": r}) + "\n" for r in rows))
    common = ["--url", stack["gateway"], "--key", stack["key"]]
    run = kinfer_batch("submit", str(source), "--model", "iris_classifier", "--wait", *common)
    assert run.returncode == 0, run.stderr
    assert "succeeded 30, failed 1 of 31" in run.stdout and "items/s" in run.stdout
    job_id = run.stdout.split()[1].rstrip(":")
    out = tmp_path / "results.jsonl"
    old_style = kinfer_batch("results", job_id, "-o", str(out), *common)  # -o FILE still works, with a warning
    assert old_style.returncode == 0 and "use --out" in old_style.stderr
    assert kinfer_batch("results", job_id, "--out", str(out), *common).returncode == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(31))
    assert lines[0]["prediction"] == "setosa" and "error" in lines[30]
    status = json.loads(kinfer_batch("status", job_id, "-o", "json", *common).stdout)
    assert status["status"] == "completed" and status["failed"] == 1
    cancel = kinfer_batch("cancel", job_id, *common)
    assert cancel.returncode == 1 and cancel.stderr.startswith("error: conflict: ") and "HTTP 409" in cancel.stderr
    assert "already completed" in cancel.stderr
    short = kinfer_batch("status", job_id[:8], "-o", "json", *common)  # a unique prefix names the job
    assert short.returncode == 0 and json.loads(short.stdout)["job_id"] == job_id, short.stderr


def test_cli_uploads_a_file_under_the_callers_prefix(stack: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "upload me.jsonl"
    source.write_text("".join(json.dumps({"data": [5.1, 3.5, 1.4, 0.2]}) + "\n" for _ in range(12)))
    run = kinfer_batch(
        "submit",
        str(source),
        "--upload",
        "--model",
        "iris_classifier",
        "--wait",
        "--url",
        stack["gateway"],
        "--key",
        stack["key"],
    )
    assert run.returncode == 0, run.stderr
    assert "succeeded 12, failed 0 of 12" in run.stdout and "upload" in run.stderr
    job = json.loads(
        kinfer_batch(
            "status", run.stdout.split()[1].rstrip(":"), "-o", "json", "--url", stack["gateway"], "--key", stack["key"]
        ).stdout
    )
    assert "/uploads/" in job["input_url"] and job["input_url"].endswith("/upload_me.jsonl")


def test_gateway_batch_needs_a_key_and_hides_unknown_jobs(stack: dict[str, str]) -> None:
    assert http("GET", f"{stack['gateway']}/v1/batch")[0] == 401
    status, body, _ = http("GET", f"{stack['gateway']}/v1/batch/{uuid.uuid4()}", key=stack["key"])
    assert status == 404 and body["code"] == "not_found"
