"""Per-version configs: a new version may change the model's inputs, outputs and batching. Each config
is its own Triton model when it differs (``<name>.v<version>``), so v1 and v2 serve side by side with
their own shapes on the real Triton; push options land in the served config; aliases and splits refuse
versions whose signatures differ unless asked (``allow_signature_change``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from shared.lifecycle import repository
from shared.lifecycle.repository import Layout
from tests.integration.lifecycle.conftest import Lifecycle, unique
from tests.lifecycle_support import linear_onnx, python_package

pytestmark = pytest.mark.integration

OPTIONS = {"max_batch_size": 8, "dynamic_batching": True, "max_queue_delay_us": 500, "instances": 2, "device": "cpu"}


def wide_onnx(k: float) -> bytes:
    """y = k * x with two features: input ``x`` FP32 [batch, 2], output ``y`` alike."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor("k", TensorProto.FLOAT, [1], [k])],
    )
    return bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    )


@pytest.fixture(scope="module")
def model(life: Lifecycle) -> str:
    """v1: y = 2x on one feature; v2: y = 3x on two features (another input shape)."""
    name = unique("sig")
    v1 = life.push(name, "1", linear_onnx(2.0))
    v2 = life.push(name, "2", wide_onnx(3.0))
    assert v1["state"] == v2["state"] == "ready", (v1, v2)
    return name


def version(life: Lifecycle, name: str, v: str) -> dict[str, Any]:
    resp = life.models.get(f"/v1/models/by-name/{name}/{v}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def v2_infer(life: Lifecycle, name: str, v: str, shape: list[int], data: list[float]) -> Any:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": data}]}
    return life.infer_client.post(f"/v2/models/{name}/versions/{v}/infer", json=body)


def served_config(life: Lifecycle, name: str, v: str) -> dict[str, Any]:
    resp = life.infer_client.get(f"/v2/models/{name}/versions/{v}/config")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def put_alias(life: Lifecycle, name: str, alias: str, **body: Any) -> Any:
    return life.models.put(f"/v1/models/by-name/{name}/aliases/{alias}", json=body)


def answered_by(life: Lifecycle, name: str, data: list[Any], version: str, within: float = 10) -> Any:
    """The first answer of ``version`` to an unversioned request (each process sees an alias move within
    about 1.3 s: its resolver cache)."""
    deadline = time.monotonic() + within
    while True:
        resp = life.infer_client.post("/v1/infer", json={"model": name, "input": {"data": data}})
        if resp.status_code == 200 and resp.json()["version"] == version:
            return resp
        assert time.monotonic() < deadline, f"never answered by version {version}: {resp.text}"
        time.sleep(0.1)


def test_v2_with_another_input_shape_serves_beside_v1_each_with_its_own_shape(life: Lifecycle, model: str) -> None:
    v1, v2 = version(life, model, "1"), version(life, model, "2")
    assert (v1["triton_model"], v1["triton_version"]) == (model, 1)
    assert (v2["triton_model"], v2["triton_version"]) == (f"{model}.v2", 1)
    one = v2_infer(life, model, "1", [1, 1], [4.0])
    assert one.status_code == 200, one.text
    assert one.json()["outputs"][0]["shape"] == [1, 1] and one.json()["outputs"][0]["data"] == [8.0]
    two = v2_infer(life, model, "2", [1, 2], [1.0, 2.0])
    assert two.status_code == 200, two.text
    assert two.json()["outputs"][0]["shape"] == [1, 2] and two.json()["outputs"][0]["data"] == [3.0, 6.0]
    assert two.json()["model_version"] == "2"
    assert v2_infer(life, model, "1", [1, 2], [1.0, 2.0]).status_code == 400  # each keeps its own shape
    assert v2_infer(life, model, "2", [1, 1], [4.0]).status_code == 400
    assert life.infer(model, 4.0, "1").json()["outputs"]["y"] == [8.0]
    wide = life.infer_client.post("/v1/infer", json={"model": model, "version": "2", "input": {"data": [[1.0, 2.0]]}})
    assert wide.status_code == 200 and wide.json()["outputs"]["y"] == [[3.0, 6.0]], wide.text
    assert [i["dims"] for i in served_config(life, model, "1")["input"]] == [["1"]]
    assert [i["dims"] for i in served_config(life, model, "2")["input"]] == [["2"]]


def test_the_upload_of_a_moved_version_leaves_no_file_in_the_first_triton_model(life: Lifecycle, model: str) -> None:
    v2 = version(life, model, "2")
    layout = Layout.of(life.settings)
    assert v2["artifact_uri"] == layout.uri(layout.version_prefix(f"{model}.v2", 1) + "model.onnx")
    assert v2["repository_uri"] == layout.uri(layout.version_prefix(f"{model}.v2", 1))
    assert repository.list_keys(life.services().s3, layout.bucket, layout.version_prefix(model, 2)) == {}


def test_a_version_with_a_config_seen_before_joins_its_triton_model(life: Lifecycle, model: str) -> None:
    again = life.push(model, "5", wide_onnx(4.0))
    assert again["state"] == "ready", again
    assert (again["triton_model"], again["triton_version"]) == (f"{model}.v2", 2)
    assert v2_infer(life, model, "5", [1, 2], [1.0, 2.0]).json()["outputs"][0]["data"] == [4.0, 8.0]
    assert v2_infer(life, model, "2", [1, 2], [1.0, 2.0]).json()["outputs"][0]["data"] == [3.0, 6.0]


def test_the_triton_model_of_a_long_name_stays_within_128_characters(life: Lifecycle) -> None:
    name = unique("long").ljust(128, "n")
    assert life.push(name, "1", linear_onnx(2.0))["state"] == "ready"
    wide = life.push(name, "2.0.1", wide_onnx(3.0))
    assert wide["state"] == "ready", wide
    assert wide["triton_model"] == name[: 128 - len(".v2.0.1")] + ".v2.0.1" and len(wide["triton_model"]) == 128
    assert v2_infer(life, name, "2.0.1", [1, 2], [1.0, 2.0]).json()["outputs"][0]["data"] == [3.0, 6.0]


def test_an_s3_artifact_with_options_takes_its_own_triton_model_too(life: Lifecycle, model: str) -> None:
    layout = Layout.of(life.settings)
    repository.put(life.services().s3, layout.bucket, f"incoming/{model}.onnx", linear_onnx(6.0))
    body = {"name": model, "version": "6", "framework": "onnx", "format": "onnx"}
    uri = f"s3://{layout.bucket}/incoming/{model}.onnx"
    created = life.models.post("/v1/models", json={**body, "artifact_uri": uri, "triton_config": {"instances": 2}})
    assert created.status_code == 201, created.text
    assert (created.json()["triton_model"], created.json()["triton_version"]) == (f"{model}.v6", 1)
    assert created.json()["artifact_uri"] == uri and created.json()["triton_config"] == {"instances": 2}
    assert life.wait_state(created.json()["id"])["state"] == "ready"
    assert v2_infer(life, model, "6", [1, 1], [1.0]).json()["outputs"][0]["data"] == [6.0]


def test_an_alias_refuses_another_signature_unless_asked(life: Lifecycle, model: str) -> None:
    assert put_alias(life, model, "production", version="1").status_code == 200
    refused = put_alias(life, model, "production", version="2")
    assert refused.status_code == 409, refused.text
    error = refused.json()
    assert (error["code"], error["field"]) == ("signature_mismatch", "version")
    assert "input 'x' is FP32 [-1, 1] in version 1, FP32 [-1, 2] in version 2" in error["error"]
    assert "allow_signature_change" in error["error"]
    assert answered_by(life, model, [4.0], "1").json()["outputs"]["y"] == [8.0]
    moved = put_alias(life, model, "production", version="2", allow_signature_change=True)
    assert moved.status_code == 200 and moved.json()["versions"] == {"2": 100}, moved.text
    assert answered_by(life, model, [[1.0, 1.0]], "2").json()["outputs"]["y"] == [[3.0, 3.0]]
    back = life.models.post(f"/v1/models/by-name/{model}/aliases/production/rollback")
    assert back.status_code == 200 and back.json()["versions"] == {"1": 100}  # a rollback is not checked
    bad = put_alias(life, model, "production", version="2", allow_signature_change="yes")
    assert bad.status_code == 400 and bad.json()["field"] == "allow_signature_change"


def test_a_split_refuses_versions_of_two_signatures_unless_asked(life: Lifecycle, model: str) -> None:
    refused = put_alias(life, model, "canary", versions={"1": 50, "2": 50})
    assert refused.status_code == 409, refused.text
    assert (refused.json()["code"], refused.json()["field"]) == ("signature_mismatch", "versions")
    assert "mixes two signatures" in refused.json()["error"] and "input 'x'" in refused.json()["error"]
    assert life.models.get(f"/v1/models/by-name/{model}/aliases/canary").status_code == 404
    same = put_alias(life, model, "canary", versions={"2": 50, "5": 50})  # one signature: no question asked
    assert same.status_code == 200, same.text
    asked = put_alias(life, model, "canary", versions={"1": 50, "2": 50}, allow_signature_change=True)
    assert asked.status_code == 200 and asked.json()["versions"] == {"1": 50, "2": 50}, asked.text


def test_a_shadow_refuses_another_signature_unless_asked(life: Lifecycle, model: str) -> None:
    """A shadow version that cannot take the alias's inputs would fail every mirrored request (an attacker trial
    set one that promote, split and alias PUT all refused)."""
    assert put_alias(life, model, "production", version="1").status_code == 200
    url = f"/v1/models/by-name/{model}/aliases/production/shadow"
    refused = life.models.put(url, json={"shadow": {"2": 50}})
    assert refused.status_code == 409, refused.text
    assert (refused.json()["code"], refused.json()["field"]) == ("signature_mismatch", "shadow")
    assert "answers from version '1'" in refused.json()["error"] and "input 'x'" in refused.json()["error"]
    asked = life.models.put(url, json={"shadow": {"2": 50}, "allow_signature_change": True})
    assert asked.status_code == 200 and asked.json()["shadow"] == {"2": 50}, asked.text
    assert life.models.put(url, json={"shadow": {}}).status_code == 200


def test_push_options_are_in_the_served_config(life: Lifecycle, model: str) -> None:
    v3 = life.push(model, "3", linear_onnx(5.0), triton_config=OPTIONS)
    assert v3["state"] == "ready", v3
    assert v3["triton_config"] == OPTIONS and v3["triton_model"] == f"{model}.v3"
    config = served_config(life, model, "3")
    assert config["max_batch_size"] == 8
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 500
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_CPU", 2)]
    assert served_config(life, model, "1")["max_batch_size"] == life.settings.onnx_max_batch_size  # defaults kept
    assert v2_infer(life, model, "3", [2, 1], [1.0, 2.0]).json()["outputs"][0]["data"] == [5.0, 10.0]
    assert put_alias(life, model, "stable", version="1").status_code == 200
    assert put_alias(life, model, "stable", version="3").status_code == 200  # batching is not the signature
    fixed = life.models.patch(f"/v1/models/{v3['id']}", json={"triton_config": {"instances": 1}})
    assert fixed.status_code == 400 and fixed.json()["field"] == "triton_config", fixed.text


def test_max_batch_size_0_serves_without_a_batch_dimension(life: Lifecycle, model: str) -> None:
    v4 = life.push(model, "4", linear_onnx(7.0), triton_config={"max_batch_size": 0})
    assert v4["state"] == "ready", v4
    config = served_config(life, model, "4")
    assert config.get("max_batch_size", 0) == 0 and "dynamic_batching" not in config
    assert [i["dims"] for i in config["input"]] == [["-1", "1"]]
    assert v2_infer(life, model, "4", [2, 1], [1.0, 2.0]).json()["outputs"][0]["data"] == [7.0, 14.0]
    assert put_alias(life, model, "stable", version="4").status_code == 200  # [-1, 1] either way


@pytest.mark.parametrize(
    "data,version_1,version_4",
    [([4.0], [8.0], [28.0]), ([[4.0]], [[8.0]], [[28.0]]), ([[1.0], [2.0]], [[2.0], [4.0]], [[7.0], [14.0]])],
)
def test_a_version_without_batching_takes_the_bodies_of_a_batched_one(
    life: Lifecycle, model: str, data: list[Any], version_1: list[Any], version_4: list[Any]
) -> None:
    """One row without Triton's batch dim is one row of an unbatched [-1, 1] version too (the codec adds it)."""
    if life.models.get(f"/v1/models/by-name/{model}/4").status_code == 404:  # pushed by the test above
        assert life.push(model, "4", linear_onnx(7.0), triton_config={"max_batch_size": 0})["state"] == "ready"
    _, key = life.services().keys.create_key(unique("sig-key"), "infer")  # :predict asks for a key, always
    assert not life.settings.auth_required  # the registry routes answer without one here, as on port 8083
    assert life.models.get(f"/v1/models/by-name/{model}/aliases").status_code == 200
    keyless = life.models.post(f"/v1/models/{model}/versions/1:predict", json={"instances": [data]})
    assert keyless.status_code == 401 and keyless.json()["code"] == "unauthorized", keyless.text
    assert life.models.get("/debug/traces").status_code == 401
    for v, expected in (("1", version_1), ("4", version_4)):
        body = {"model": model, "version": v, "input": {"data": data}}
        answer = life.infer_client.post("/v1/infer", json=body)
        assert answer.status_code == 200, (v, answer.text)
        assert answer.json()["outputs"]["y"] == expected, (v, answer.json())
        predicted = life.models.post(
            f"/v1/models/{model}/versions/{v}:predict",
            json={"instances": [data]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert predicted.status_code == 200, (v, predicted.text)
        assert predicted.json()["predictions"] == [expected], (v, predicted.json())


@pytest.mark.parametrize(
    "config,field",
    [
        ({"max_batch_size": -1}, "triton_config.max_batch_size"),
        ({"max_batch_size": 70000}, "triton_config.max_batch_size"),
        ({"max_batch_size": True}, "triton_config.max_batch_size"),
        ({"instances": 0}, "triton_config.instances"),
        ({"instances": 65}, "triton_config.instances"),
        ({"device": "tpu"}, "triton_config.device"),
        ({"dynamic_batching": "on"}, "triton_config.dynamic_batching"),
        ({"max_batch_size": 0, "dynamic_batching": True}, "triton_config.dynamic_batching"),
        ({"dynamic_batching": False, "max_queue_delay_us": 5}, "triton_config.max_queue_delay_us"),
        ({"max_queue_delay_us": 10_000_001}, "triton_config.max_queue_delay_us"),
        ({"colour": "red"}, "triton_config.colour"),
        ("fast", "triton_config"),
    ],
)
def test_bad_push_options_are_400_naming_the_field(life: Lifecycle, config: Any, field: str) -> None:
    name = unique("opt")
    body = {"name": name, "version": "1", "framework": "onnx", "format": "onnx", "upload": True}
    resp = life.models.post("/v1/models", json={**body, "triton_config": config})
    assert resp.status_code == 400, resp.text
    assert (resp.json()["code"], resp.json()["field"]) == ("invalid_input", field), resp.json()
    assert life.models.get(f"/v1/models/by-name/{name}/1").status_code == 404


def test_options_a_file_cannot_take_are_400_and_nothing_is_installed(life: Lifecycle) -> None:
    name = unique("opt")
    fixed = life.register(name, "1", triton_config={"max_batch_size": 8})
    resp = life.upload(fixed["id"], linear_onnx(2.0, batched=False))
    assert resp.status_code == 400 and resp.json()["field"] == "triton_config.max_batch_size", resp.text
    assert "input 'x' has the fixed shape [1]" in resp.json()["error"]
    assert life.models.get(f"/v1/models/{fixed['id']}").json()["state"] == "awaiting_upload"
    batcher = life.register(name, "2", triton_config={"dynamic_batching": True})
    resp = life.upload(batcher["id"], linear_onnx(2.0, batched=False))
    assert resp.status_code == 400 and resp.json()["field"] == "triton_config.dynamic_batching", resp.text
    packaged = life.register(name, "3", framework="python", format="python", triton_config={"instances": 2})
    resp = life.upload(packaged["id"], python_package(2.0))
    assert resp.status_code == 400 and resp.json()["field"] == "triton_config", resp.text
    plain = life.models.post(
        "/v1/models",
        json={"name": name, "version": "4", "framework": "onnx", "format": "onnx", "triton_config": {"instances": 1}},
    )
    assert plain.status_code == 400 and plain.json()["field"] == "triton_config", plain.text
    for created in (fixed, batcher, packaged):
        assert life.models.delete(f"/v1/models/{created['id']}").status_code == 204
