"""`kinfer deploy upload-models` against a real S3 API server (moto_server), then read back."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from shared.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

PORTS = range(18300, 18400)


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port in 18300-18399 for moto_server")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    server = Path(sys.prefix) / "bin" / "moto_server"
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            pytest.fail(f"moto_server exited with {proc.returncode} before listening on {port}")
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"moto_server did not listen on {port} within 20s")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_upload_models_writes_the_production_repository(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {
        "S3_ENDPOINT_URL": s3_endpoint,
        "S3_REGION": "us-east-1",
        "S3_ACCESS_KEY_ID": "test",
        "S3_SECRET_ACCESS_KEY": "test",
    }.items():
        monkeypatch.setenv(name, value)
    repository = ROOT / "models" / "production"
    assert (
        main(
            [
                "deploy",
                "upload-models",
                "--repository",
                str(repository),
                "--bucket",
                "triton-models-it",
                "--prefix",
                "models",
            ]
        )
        == 0
    )
    assert "to s3://triton-models-it/models/" in capsys.readouterr().out

    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    listed = client.list_objects_v2(Bucket="triton-models-it", Prefix="models/")
    keys = {obj["Key"] for obj in listed.get("Contents", [])}
    onnx = repository / "iris_classifier" / "1" / "model.onnx"
    assert "models/iris_classifier/1/model.onnx" in keys
    body = client.get_object(Bucket="triton-models-it", Key="models/iris_classifier/1/model.onnx")["Body"].read()
    assert body == onnx.read_bytes()


def test_upload_models_fails_cleanly_when_the_repository_is_missing(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_endpoint)
    assert main(["deploy", "upload-models", "--repository", str(tmp_path / "nope")]) == 1
    assert "model repository not found" in capsys.readouterr().err
