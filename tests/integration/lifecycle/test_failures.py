"""Bad input and failure: every bad artifact is a clear 4xx or a ``failed`` state with Triton's reason,
nothing is half-registered, and the version already serving keeps serving; a Triton restart comes
back with every ready version; an unneeded version is unloaded after the grace period."""

from __future__ import annotations

import asyncio
import hashlib
import io
import socket
import tarfile
import time
from typing import Any

import pytest

from shared.lifecycle import repository
from shared.lifecycle.repository import Layout
from tests.integration.lifecycle.conftest import Lifecycle, unique
from tests.lifecycle_support import PY_CONFIG, linear_onnx, package, python_package, table_onnx

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def serving(life: Lifecycle) -> str:
    """A model whose version 1 (y = 2x) serves through alias production."""
    name = unique("safe")
    assert life.push(name, "1", linear_onnx(2.0))["state"] == "ready"
    assert life.models.put(f"/v1/models/by-name/{name}/aliases/production", json={"version": "1"}).status_code == 200
    return name


def still_serving(life: Lifecycle, name: str) -> None:
    resp = life.infer(name, 2.0)
    assert resp.status_code == 200 and resp.json()["outputs"]["y"] == [4.0] and resp.json()["version"] == "1"


def version_keys(life: Lifecycle, model: dict[str, Any]) -> dict[str, int]:
    layout = Layout.of(life.settings)
    return repository.list_keys(
        life.services().s3, layout.bucket, layout.version_prefix(model["triton_model"], model["triton_version"])
    )


def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        config = PY_CONFIG.encode()
        info = tarfile.TarInfo("config.pbtxt")
        info.size = len(config)
        tar.addfile(info, io.BytesIO(config))
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data) if data else None)
    return out.getvalue()


def symlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("1/model.py")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


def bad_graph() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "missing"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
    )
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def string_input() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["y"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["n", 1])],
    )
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


@pytest.mark.parametrize(
    "data,code,words",
    [
        (b"definitely not a model", "invalid_input", "not an ONNX model"),
        (linear_onnx(2.0)[:40], "invalid_input", "ONNX"),
        (bad_graph(), "invalid_input", "corrupt or invalid"),
        (string_input(), "invalid_input", "unsupported tensor type STRING"),
        (package({"1/model.py": "x = 1"}), "invalid_input", "no config.pbtxt"),
        (package({"config.pbtxt": PY_CONFIG}), "invalid_input", "exactly one numeric version folder"),
        (package({"config.pbtxt": PY_CONFIG, "1/a.py": "", "2/b.py": ""}), "invalid_input", "found: 1, 2"),
        (package({"config.pbtxt": "name: {{", "1/model.py": ""}), "invalid_input", "does not parse"),
        (tar_with(tarfile.TarInfo("../../escape.py"), b"x"), "invalid_input", "escapes the package"),
        (tar_with(tarfile.TarInfo("/abs/model.py"), b"x"), "invalid_input", "escapes the package"),
        (tar_with(symlink()), "invalid_input", "link or a special file"),
        (b"\x1f\x8b" + b"\x00" * 30, "invalid_input", "not a readable .tar.gz"),
    ],
    ids=[
        "garbage",
        "truncated-onnx",
        "invalid-graph",
        "string-tensor",
        "no-config",
        "no-version",
        "two-versions",
        "bad-config",
        "dotdot",
        "absolute",
        "symlink",
        "bad-gzip",
    ],
)
def test_a_bad_artifact_is_400_with_its_reason_and_nothing_is_half_registered(
    life: Lifecycle, serving: str, data: bytes, code: str, words: str
) -> None:
    created = life.register(serving, "9")
    try:
        resp = life.upload(created["id"], data)
        assert resp.status_code == 400, resp.text
        assert resp.json()["code"] == code and words in resp.json()["error"], resp.json()
        after = life.models.get(f"/v1/models/{created['id']}").json()
        assert after["state"] == "awaiting_upload" and after["artifact_uri"] is None
        assert version_keys(life, created) == {}, "no file of the version is left in the repository"
        resolve = life.infer(serving, 1.0, "9")
        assert resolve.status_code == 503 and resolve.json()["code"] == "version_not_ready"
        still_serving(life, serving)
    finally:
        life.models.delete(f"/v1/models/{created['id']}")


def test_a_version_triton_cannot_load_fails_with_its_reason_while_the_old_one_serves(life: Lifecycle) -> None:
    name = unique("pkg")
    good = life.push(name, "1", python_package(2.0), framework="python", format="python")
    assert good["state"] == "ready", good
    assert life.models.put(f"/v1/models/by-name/{name}/aliases/production", json={"version": "1"}).status_code == 200
    bad = life.push(name, "2", python_package(3.0, broken=True), framework="python", format="python")
    assert bad["state"] == "failed" and "this version refuses to load" in bad["state_reason"], bad
    resp = life.infer(name, 2.0)
    assert resp.status_code == 200 and resp.json()["outputs"]["y"] == [4.0]
    pinned = life.infer(name, 2.0, "2")
    assert pinned.status_code == 404 and pinned.json()["code"] == "version_failed"
    assert "refuses to load" in pinned.json()["error"]
    moved = life.models.put(f"/v1/models/by-name/{name}/aliases/production", json={"version": "2"})
    assert moved.status_code == 409 and moved.json()["code"] == "version_not_ready"
    fixed = life.push(name, "3", python_package(5.0, top="my_model"), framework="python", format="python")
    assert fixed["state"] == "ready" and life.infer(name, 2.0, "3").json()["outputs"]["y"] == [10.0]


def test_a_different_config_gets_a_triton_model_of_its_own_and_the_old_one_serves(
    life: Lifecycle, serving: str
) -> None:
    created = life.register(serving, "8", framework="python", format="python")
    layout, s3 = Layout.of(life.settings), life.services().s3
    kept = layout.package_key(f"{serving}.v8", 1)
    try:
        resp = life.upload(created["id"], python_package(7.0))
        assert resp.status_code == 200, resp.text
        assert (resp.json()["triton_model"], resp.json()["triton_version"]) == (f"{serving}.v8", 1)
        assert resp.json()["artifact_uri"] == layout.uri(kept), "the kept package goes along"
        assert version_keys(life, created) == {}, "nothing of it is left in the first Triton model"
        first = layout.package_key(created["triton_model"], created["triton_version"])
        assert repository.list_keys(s3, layout.bucket, first) == {}
        assert life.wait_state(created["id"])["state"] == "ready"
        assert life.infer(serving, 2.0, "8").json()["outputs"]["y"] == [14.0]
        still_serving(life, serving)
    finally:
        life.models.delete(f"/v1/models/{created['id']}")
    assert repository.list_keys(s3, layout.bucket, kept) == {}, "deleting the version deletes its package"


def test_checksum_size_duplicate_and_second_upload(life: Lifecycle, serving: str) -> None:
    created = life.register(serving, "7")
    data = linear_onnx(2.0)
    wrong = life.upload(created["id"], data, sha256="0" * 64)
    assert wrong.status_code == 400 and wrong.json()["code"] == "checksum_mismatch"
    assert life.upload(created["id"], data, sha256="xyz").json()["field"] == "sha256"
    big = life.upload(created["id"], b"\0" * (life.settings.max_artifact_bytes + 1))
    assert big.status_code == 413 and big.json()["code"] == "payload_too_large"
    assert version_keys(life, created) == {}
    ok = life.upload(created["id"], data, sha256=hashlib.sha256(data).hexdigest())
    assert ok.status_code == 200 and ok.json()["state"] == "pending", ok.text
    assert ok.json()["artifact_sha256"] == hashlib.sha256(data).hexdigest()
    again = life.upload(created["id"], data)
    assert again.status_code == 409 and again.json()["code"] == "artifact_exists"
    duplicate = life.models.post(
        "/v1/models", json={"name": serving, "version": "7", "framework": "onnx", "format": "onnx", "upload": True}
    )
    assert duplicate.status_code == 409 and duplicate.json()["field"] == "version"
    assert life.wait_state(created["id"])["state"] == "ready"
    life.models.delete(f"/v1/models/{created['id']}")


def test_an_upload_interrupted_midway_leaves_no_visible_version(life: Lifecycle, serving: str) -> None:
    from tests.integration.servers import InProcessServer

    server = InProcessServer("models", "manage_models")
    created = life.register(serving, "6")
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                (
                    f"PUT /v1/models/{created['id']}/artifact HTTP/1.1\r\nHost: x\r\n"
                    "Content-Type: application/octet-stream\r\nContent-Length: 4000000\r\n\r\n"
                ).encode()
            )
            sock.sendall(b"\x08" * 1_000_000)
            time.sleep(0.5)
        time.sleep(1.0)
        after = life.models.get(f"/v1/models/{created['id']}").json()
        assert after["state"] == "awaiting_upload" and after["artifact_uri"] is None
        assert version_keys(life, created) == {}
        assert life.infer(serving, 1.0, "6").status_code == 503
        still_serving(life, serving)
        retried = life.upload(created["id"], linear_onnx(2.0))
        assert retried.status_code == 200, retried.text
    finally:
        server.stop()
        life.models.delete(f"/v1/models/{created['id']}")


def test_register_from_an_s3_artifact_uri(life: Lifecycle) -> None:
    layout = Layout.of(life.settings)
    s3 = life.services().s3
    repository.ensure_bucket(s3, layout)
    repository.put(s3, layout.bucket, "incoming/model.onnx", linear_onnx(7.0))
    name = unique("uri")
    body = {
        "name": name,
        "version": "1",
        "framework": "onnx",
        "format": "onnx",
        "artifact_uri": f"s3://{layout.bucket}/incoming/model.onnx",
    }
    missing = life.models.post("/v1/models", json=dict(body, artifact_uri=f"s3://{layout.bucket}/nope.onnx"))
    assert missing.status_code == 400 and missing.json()["code"] == "artifact_not_found"
    s3.create_bucket(Bucket=f"other-{life.uid}")
    repository.put(s3, f"other-{life.uid}", "m.onnx", linear_onnx(7.0))
    elsewhere = life.models.post("/v1/models", json=dict(body, artifact_uri=f"s3://other-{life.uid}/m.onnx"))
    assert elsewhere.status_code == 400 and elsewhere.json()["code"] == "artifact_bucket_not_allowed"
    # Outside the allowed buckets, an object that is not there answers the same: no existence oracle.
    absent = life.models.post("/v1/models", json=dict(body, artifact_uri=f"s3://other-{life.uid}/none.onnx"))
    assert absent.json() | {"request_id": "", "trace_id": ""} == elsewhere.json() | {"request_id": "", "trace_id": ""}
    for odd in ("s3://127.0.0.1:18001/x", "s3://x@host:1/x", f"s3://{layout.bucket}:18001/x"):
        refused = life.models.post("/v1/models", json=dict(body, artifact_uri=odd))
        assert refused.status_code == 400 and refused.json()["field"] == "artifact_uri", (odd, refused.text)
    assert life.models.get(f"/v1/models?name={name}").json()["total"] == 0, "nothing registered"
    created = life.models.post("/v1/models", json=body)
    assert created.status_code == 201 and created.json()["state"] == "pending", created.text
    assert created.json()["artifact_uri"] == body["artifact_uri"]
    assert life.wait_state(created.json()["id"])["state"] == "ready"
    assert life.infer(name, 1.0).json()["outputs"]["y"] == [7.0]


def test_an_unneeded_version_is_unloaded_after_the_grace_period(life: Lifecycle) -> None:
    name = unique("grace")
    v1 = life.push(name, "1", linear_onnx(2.0))
    life.push(name, "2", linear_onnx(3.0))
    assert 1 in life.agent.triton.loaded()[name]
    life.models.patch(f"/v1/models/{v1['id']}", json={"status": "deprecated"})
    deadline = time.monotonic() + 15
    while 1 in life.agent.triton.loaded().get(name, set()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert life.agent.triton.loaded()[name] == {2}
    assert life.infer(name, 1.0, "1").json()["code"] == "version_not_active"
    assert life.infer(name, 1.0).json()["outputs"]["y"] == [3.0]


def test_a_triton_restart_comes_back_with_every_ready_version(life: Lifecycle) -> None:
    name = unique("restart")
    for version, k in (("1", 2.0), ("2", 3.0)):
        assert life.push(name, version, linear_onnx(k))["state"] == "ready"
    life.triton.stop()
    assert life.infer(name, 1.0, "1").status_code in (502, 503)
    life.triton.start(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answers = [life.infer(name, 1.0, v) for v in ("1", "2")]
        if all(a.status_code == 200 for a in answers):
            break
        time.sleep(0.2)
    assert [a.json()["outputs"]["y"] for a in answers] == [[2.0], [3.0]]
    while not life.agent.synced and time.monotonic() < deadline:
        time.sleep(0.1)
    assert life.agent.synced, "the agent's readiness is back once its pass is done"


def test_deleting_a_version_removes_its_files_but_never_the_callers_object(life: Lifecycle) -> None:
    layout = Layout.of(life.settings)
    s3 = life.services().s3
    repository.ensure_bucket(s3, layout)
    repository.put(s3, layout.bucket, "incoming/keep.onnx", linear_onnx(2.0))
    name = unique("del")
    created = life.models.post(
        "/v1/models",
        json={
            "name": name,
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "artifact_uri": f"s3://{layout.bucket}/incoming/keep.onnx",
        },
    ).json()
    model = life.wait_state(created["id"])
    assert version_keys(life, model)
    assert life.models.delete(f"/v1/models/{model['id']}").status_code == 204
    assert version_keys(life, model) == {}
    kept = repository.list_keys(s3, layout.bucket, "incoming/keep.onnx")
    assert kept == {"incoming/keep.onnx": len(linear_onnx(2.0))}


def test_a_model_that_fails_on_one_callers_input_never_opens_the_backends_circuit(life: Lifecycle) -> None:
    """One tenant's bad input is that tenant's 422, however often: the backend stays closed for everyone."""
    name = unique("table")
    assert life.push(name, "1", table_onnx())["state"] == "ready"
    fail_max = life.settings.breaker_fail_max
    for _ in range(fail_max + 3):
        bad = life.infer(name, 7.0)
        assert bad.status_code == 422 and bad.json()["code"] == "model_error", bad.text
        assert "Gather" not in bad.json()["error"] and "bounds" not in bad.json()["error"], "no Triton text"
    good = life.infer(name, 2.0)
    assert good.status_code == 200 and good.json()["outputs"]["y"] == [30.0], good.text
    items = [{"data": [float(i % 4)]} for i in range(20)] + [{"data": [9.0]}]
    svc = life.services()
    results = svc.items.infer_items(asyncio.run(svc.resolver.resolve_async(name)), items)
    assert [r.error is None for r in results] == [True] * 20 + [False], "; ".join(str(r.error) for r in results)
    assert [r.outputs["y"] for r in results[:4]] == [[10.0], [20.0], [30.0], [40.0]]


def test_two_uploads_into_one_version_never_delete_each_others_files(life: Lifecycle, serving: str) -> None:
    """A retried or second upload while one is in flight: 409 upload_in_progress, and the first one's
    files stay (the loser's cleanup used to delete the winner's model.onnx)."""
    import asyncio

    from shared.errors import Conflict

    created = life.register(serving, "8")
    data = linear_onnx(2.0)

    async def slowly() -> Any:
        for i in range(0, len(data), 16):
            await asyncio.sleep(0.05)
            yield data[i : i + 16]

    async def both() -> list[Any]:
        svc = life.services()
        return await asyncio.gather(
            *(svc.artifacts.receive_upload(created["id"], slowly(), None) for _ in range(2)), return_exceptions=True
        )

    first, second = asyncio.run(both())
    outcomes = sorted([type(first).__name__, type(second).__name__])
    assert outcomes == ["Conflict", "dict"], (first, second)
    lost = first if isinstance(first, Conflict) else second
    assert lost.code == "upload_in_progress" and "in progress" in lost.message
    assert life.wait_state(created["id"])["state"] == "ready", "the winner's files are all there"
    assert version_keys(life, created), "model.onnx still in the repository"
    assert life.upload(created["id"], data).json()["code"] == "artifact_exists", "after it: the usual 409"
    life.models.delete(f"/v1/models/{created['id']}")
