"""The real local Triton (nvidia-pytriton's tritonserver) serving the demo models over gRPC."""

from __future__ import annotations

import importlib.util
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from shared.localstack.triton import TritonServer, TritonStartError, default_repository, stop_pid
from tests.conftest import free_port

pytestmark = pytest.mark.integration

REPOSITORY = default_repository()


def ports() -> tuple[int, int, int]:
    """HTTP, gRPC and metrics ports nobody else uses (test runs may share the machine)."""
    return free_port(), free_port(), free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    state = tmp_path_factory.mktemp("triton")
    with TritonServer(REPOSITORY, state, *ports()) as triton:
        yield triton


@pytest.fixture(scope="module")
def client(server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(server.grpc_url)
    yield triton
    triton.close()


def infer(client, model: str, name: str, array: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
    return {o: result.as_numpy(o) for o in outputs}


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (tritonserver and its Python backend stubs)."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def test_server_is_ready_and_serves_metrics(server):
    import urllib.request

    assert server.is_ready() and server.pid is not None
    assert server.http_url == f"http://127.0.0.1:{server.ports['http']}"
    assert server.grpc_url == f"127.0.0.1:{server.ports['grpc']}"
    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        assert b"nv_inference_count" in resp.read()


def test_iris_batch_matches_onnxruntime(client):
    from sklearn.datasets import load_iris

    spec = importlib.util.spec_from_file_location("kinfer_it_iris_model", REPOSITORY / "iris_classifier/1/model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    session = module.make_session(REPOSITORY / "iris_classifier/1/model.onnx")
    features = load_iris().data[::15].astype(np.float32)  # 10 rows, all three classes
    got = infer(client, "iris_classifier", "features", features, ["label", "probabilities"])
    label, probabilities = session.run(["label", "probabilities"], {"features": features})
    assert got["label"].dtype == np.int64 and got["label"].shape == (10, 1)
    np.testing.assert_array_equal(got["label"], label)
    np.testing.assert_allclose(got["probabilities"], probabilities, rtol=1e-6)
    assert set(got["label"][:, 0].tolist()) == {0, 1, 2}


def test_iris_rejects_wrong_width(client):
    with pytest.raises(InferenceServerException, match="features"):
        infer(client, "iris_classifier", "features", np.ones((2, 3), dtype=np.float32), ["label"])


def reference_scores(values: np.ndarray) -> tuple[np.ndarray, list[float], int]:
    x = values.astype(np.float64)
    std = x.std()
    z = (x - x.mean()) / std if std else np.zeros_like(x)
    e = np.exp(z - z.max())
    return e / e.sum(), [x.mean(), std, x.min(), x.max()], int(x.argmax())


@pytest.mark.parametrize("length", [1, 5, 1000])
def test_vector_scorer_matches_numpy(client, length):
    values = np.random.default_rng(length).normal(3.0, 2.0, length).astype(np.float32)
    got = infer(client, "vector_scorer", "values", values, ["probabilities", "stats", "argmax"])
    probabilities, stats, argmax = reference_scores(values)
    assert got["probabilities"].shape == (length,) and got["stats"].shape == (4,)
    np.testing.assert_allclose(got["probabilities"], probabilities, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(got["stats"], stats, rtol=1e-5, atol=1e-6)
    assert got["argmax"].tolist() == [argmax]


def test_vector_scorer_rejects_nan_with_a_message(client):
    with pytest.raises(InferenceServerException, match="finite") as info:
        infer(client, "vector_scorer", "values", np.array([1.0, np.nan], dtype=np.float32), ["argmax"])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"  # a client error (HTTP 400), not a 500


def test_metadata_and_config_are_readable(client):
    meta = client.get_model_metadata("iris_classifier", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("features", "FP32", ["-1", "4"])]
    config = client.get_model_config("iris_classifier", as_json=True)["config"]
    assert config["max_batch_size"] == 64
    assert config["parameters"]["class_names"]["string_value"] == "setosa,versicolor,virginica"
    scorer = client.get_model_config("vector_scorer", as_json=True)["config"]
    assert [o["name"] for o in scorer["output"]] == ["probabilities", "stats", "argmax"]
    assert client.is_model_ready("vector_scorer") and client.is_model_ready("iris_classifier")


def test_busy_port_gives_a_clear_error(server, tmp_path):
    taken = server.ports["grpc"]
    other = TritonServer(REPOSITORY, tmp_path, http_port=free_port(), grpc_port=taken, metrics_port=free_port())
    with pytest.raises(TritonStartError, match=f"grpc port 127.0.0.1:{taken} is already in use") as info:
        other.start(timeout=10)
    assert "\n" not in str(info.value) and other.pid is None
    assert server.is_ready()


def test_broken_model_fails_fast_with_the_reason(tmp_path):
    model = tmp_path / "repo" / "broken" / "1"
    model.mkdir(parents=True)
    (model.parent / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [1] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]\n'
    )
    (model / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('kinfer-broken-model')\n"
    )
    triton = TritonServer(tmp_path / "repo", tmp_path / "state", *ports())
    with pytest.raises(TritonStartError, match="tritonserver exited") as info:
        triton.start(timeout=30)
    first_line = str(info.value).splitlines()[0]
    assert "failed to load 'broken'" in first_line and "kinfer-broken-model" in first_line
    assert triton.pid is None


def test_missing_repository_is_reported(tmp_path):
    with pytest.raises(TritonStartError, match="models/build.py"):
        TritonServer(tmp_path / "nope", tmp_path, *ports()).start()


def test_stop_leaves_no_process_behind(tmp_path):
    triton = TritonServer(REPOSITORY, tmp_path, *ports())
    triton.start()
    pid, shm = triton.pid, f"kinfer{triton.ports['grpc']}_*"
    assert pid is not None and len(group_members(pid)) >= 3  # server + one stub per model
    triton.stop()
    triton.stop()  # idempotent
    assert group_members(pid) == [] and triton.pid is None and not triton.is_ready()
    assert list(Path("/dev/shm").glob(shm)) == []


def test_killed_server_leaves_no_shared_memory(tmp_path):
    triton = TritonServer(REPOSITORY, tmp_path, *ports())
    triton.start()
    pid, shm = triton.pid, f"kinfer{triton.ports['grpc']}_*"
    assert pid is not None and list(Path("/dev/shm").glob(shm))  # the Python backend's regions
    os.kill(pid, signal.SIGKILL)  # no clean shutdown: stop() must still clean up
    triton.stop()
    assert group_members(pid) == [] and list(Path("/dev/shm").glob(shm)) == []


def test_detached_server_is_stopped_by_pid(tmp_path):
    triton = TritonServer(REPOSITORY, tmp_path, *ports(), log_path=tmp_path / "logs" / "t.log")
    triton.start(detach=True)
    pid = triton.pid
    assert pid is not None and os.getsid(pid) == pid  # own session: survives the CLI that started it
    assert (tmp_path / "triton.pid").read_text().strip() == str(pid)
    assert "Started GRPCInferenceService" in (tmp_path / "logs" / "t.log").read_text()
    assert stop_pid(pid) is True
    assert group_members(pid) == [] and stop_pid(pid) is False
    triton.stop()  # reaps; still idempotent
