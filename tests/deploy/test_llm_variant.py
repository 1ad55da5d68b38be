"""The production path of generative models (issue 24, item 5): knative/components/triton-llm, the Knative
Service triton-llm (Triton's vLLM backend on a GPU, scale-to-zero), checked offline as the triton Service is.

The variant is rendered the three ways it is used: an overlay plus the component (as terraform composes
them), the component listed in an overlay's own kustomization, and terraform's platform patches on top.
Each rendering goes through the same checks as knative/base/services/triton.yaml, by calling the existing
checks on it: Knative's admission rules (test_admission.py), the CRD schemas of the pinned Serving release
(test_crd_schemas.py), hardening (test_hardening.py), GPU taints and sidecar probes (test_serving.py),
periodic triggers (test_scale_to_zero.py), the Triton admin key (test_triton_admin.py), pinned maintained
images (test_terraform_rules.py) and the NetworkPolicy flows (test_network.py).

The model's package (example/package) carries the tensor interface of Triton's vLLM backend, read from
triton-inference-server/vllm_backend ``src/model.py`` ``auto_complete_config`` at the release branches
r25.07 (8c28d97b9756623ebe701d4b92b97625a5223ea1, the Triton floor of test_versions.py) and r26.01
(c70d65474833bac171cc33470c5e723c604558d6, the newest release branch of the snapshot read; the interface
is the same in both). ``VLLM_BACKEND`` below records it. What the same source says of the responses (the
gateway relies on it, docs/llm.md): streamed responses carry only the new text (``prev_lens_text_output``),
the last one is flagged TRITONSERVER_RESPONSE_COMPLETE_FINAL (no empty final response), ``finish_reason``
is ``str(output.finish_reason)`` on every response asked for it ("None" until the last), and
``num_output_tokens`` of a streamed response counts the tokens of that response alone;
``exclude_input_in_output`` defaults to false without ``stream`` and to true with it (false with ``stream``
is an error); ``sampling_parameters`` is a JSON object of vLLM ``SamplingParams`` fields (an unknown key
fails the request).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import registry
from shared.lifecycle import artifacts, packages, tritonconfig
from tests.deploy import test_admission as admission
from tests.deploy import test_crd_schemas as crd_schemas
from tests.deploy import test_hardening as hardening
from tests.deploy import test_network as network
from tests.deploy import test_scale_to_zero as scale_to_zero
from tests.deploy import test_serving as serving
from tests.deploy import test_terraform_rules as terraform_rules
from tests.deploy import test_triton_admin as triton_admin
from tests.deploy import test_versions as versions
from tests.deploy.support import (
    KNATIVE,
    OVERLAYS,
    ROOT,
    TF,
    Doc,
    copy_overlay,
    group_of,
    knative_release,
    ksvcs,
    named,
    of_kind,
    parse,
    render,
    render_platform,
    render_with_component,
    typed,
    unquote,
    variable_default,
)

COMPONENT = KNATIVE / "components" / "triton-llm"
EXAMPLE = COMPONENT / "example"
PLATFORM = TF / "modules" / "platform"
NAME = "triton-llm"
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
VLLM_IMAGE = re.compile(r"nvcr\.io/nvidia/tritonserver:(?P<yy>\d+)\.(?P<mm>\d+)-vllm-python-py3")
PLATFORM_VALUES = {
    "var.image": "registry.example.com/kinfer:1.0.0",
    "local.agent_image": "registry.example.com/kinfer-agent:7.0",
    "var.kafka_names.chunk_topic": "kinfer.batch.chunks",
    "var.kafka_names.request_topic": "kinfer.batch.requests",
    "var.kafka_names.worker_group": "kinfer-batch-worker",
    "var.kafka_names.intake_group": "kinfer-batch-intake",
    "var.data_namespace": "kinfer-data",
}
# triton-inference-server/vllm_backend src/model.py auto_complete_config (branches r25.07 and r26.01):
# (role, name) -> (data type, dims, optional). Inputs the backend also takes that the OpenAI routes do not
# send (image, return_cumulative_logprob, return_logprobs, embedding_request) and their outputs
# (cumulative_logprob, logprobs) are left to its auto-complete.
VLLM_BACKEND = {
    ("input", "text_input"): ("TYPE_STRING", (1,), False),
    ("input", "stream"): ("TYPE_BOOL", (1,), True),
    ("input", "sampling_parameters"): ("TYPE_STRING", (1,), True),
    ("input", "exclude_input_in_output"): ("TYPE_BOOL", (1,), True),
    ("input", "return_finish_reason"): ("TYPE_BOOL", (1,), True),
    ("input", "return_num_input_tokens"): ("TYPE_BOOL", (1,), True),
    ("input", "return_num_output_tokens"): ("TYPE_BOOL", (1,), True),
    ("output", "text_output"): ("TYPE_STRING", (-1,), False),
    ("output", "finish_reason"): ("TYPE_STRING", (-1,), False),
    ("output", "num_input_tokens"): ("TYPE_UINT32", (1,), False),
    ("output", "num_output_tokens"): ("TYPE_UINT32", (-1,), False),
}
# The sampling parameters the OpenAI routes send (docs/llm.md): all vLLM SamplingParams fields.
SAMPLING_KEYS = {"max_tokens", "temperature", "top_p", "stop", "seed"}


def _component_in_overlay(copy: Path) -> Any:
    """An edit of an overlay copied to ``copy`` (support.copy_overlay): the component in its own list."""

    def edit(kustomization: dict[str, Any]) -> None:
        kustomization["components"] = [*kustomization.get("components", []), os.path.relpath(COMPONENT, copy)]

    return edit


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    found = {}
    for overlay in OVERLAYS:
        found[f"{overlay}+triton-llm"] = render_with_component(tmp_path_factory.mktemp(overlay), overlay, NAME)
    # Listed in the overlay itself, the overlay's images transformer reaches the component's Service too.
    inside = tmp_path_factory.mktemp("inside")
    copy_overlay(inside, "prod", _component_in_overlay(inside))
    found["prod (component in the overlay)"] = render(inside, "--load-restrictor=LoadRestrictionsNone")
    return found


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    tmp = tmp_path_factory.mktemp("platform")
    return {
        "static keys": render_platform(tmp / "a", "prod", PLATFORM_VALUES, (NAME,)),
        "workload identity": render_platform(tmp / "b", "prod", PLATFORM_VALUES, (NAME, "s3-workload-identity")),
        "warm": render_platform(tmp / "c", "prod", PLATFORM_VALUES, ("triton-warm", NAME)),
    }


def llm(docs: list[Doc]) -> Doc:
    services = ksvcs(docs)
    assert NAME in services, "the component adds the Knative Service triton-llm"
    return services[NAME]


def containers(svc: Doc) -> dict[str, Doc]:
    return {c["name"]: c for c in svc["spec"]["template"]["spec"]["containers"]}


def env(c: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in c.get("env", [])}


def config(docs: list[Doc]) -> dict[str, str]:
    return dict(of_kind(docs, "ConfigMap")["kinfer-config"]["data"])


# -- the variant renders, beside an unchanged triton --------------------------------------------------
def test_the_component_adds_triton_llm_and_leaves_everything_else_alone(rendered: dict[str, list[Doc]]) -> None:
    for overlay in OVERLAYS:
        before = render(KNATIVE / "overlays" / overlay)
        after = rendered[f"{overlay}+triton-llm"]
        added = {(d["kind"], d["metadata"]["name"]) for d in after} - {
            (d["kind"], d["metadata"]["name"]) for d in before
        }
        assert added == {("Service", NAME), ("NetworkPolicy", "allow-llm-weights-egress")}, overlay
        for name, svc in ksvcs(before).items():
            assert ksvcs(after)[name] == svc, f"{overlay}: the component changed the Service {name}"
        changed = {k for k, v in config(after).items() if config(before).get(k) != v}
        assert changed == {"BACKEND_ALLOWLIST", "PROBE_SKIP_BACKENDS"}, overlay
        for doc in after:
            if (doc["kind"], doc["metadata"]["name"]) in added:
                assert doc["metadata"]["namespace"] == ksvcs(after)["triton"]["metadata"]["namespace"] == "kinfer"
                assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kinfer"


def test_inside_an_overlay_the_component_renders_the_same_service(rendered: dict[str, list[Doc]]) -> None:
    assert llm(rendered["prod (component in the overlay)"]) == llm(rendered["prod+triton-llm"])


# -- the checks of triton.yaml, on the variant ------------------------------------------------------------
def test_knative_admission_rules(rendered: dict[str, list[Doc]]) -> None:
    admission.test_no_container_sets_an_environment_variable_knative_reserves(rendered)
    admission.test_no_container_uses_a_port_knative_reserves(rendered)
    admission.test_one_serving_port_named_for_its_protocol(rendered)
    admission.test_probes_are_ones_the_webhook_accepts(rendered)
    admission.test_pod_fields_behind_feature_flags_have_their_flag_enabled(rendered)
    admission.test_every_public_rule_outlasts_its_services_own_timeout(rendered)
    admission.test_a_caller_who_waits_through_a_cold_start_is_not_cut_first(rendered)
    for docs in rendered.values():
        main = admission.serving(llm(docs))
        assert main["name"] == "triton" and main["ports"] == [{"name": "h2c", "containerPort": 8001}]


def test_the_admission_checks_see_the_variant(rendered: dict[str, list[Doc]]) -> None:
    """The checks above would refuse a triton-llm that broke a rule (they do read the added Service)."""
    svc = json.loads(json.dumps(llm(rendered["prod+triton-llm"])))
    svc["spec"]["template"]["spec"]["containers"][1]["env"].append({"name": "K_SERVICE", "value": "x"})
    with pytest.raises(AssertionError, match="reserved by Knative"):
        admission.test_no_container_sets_an_environment_variable_knative_reserves({"probe": [svc]})
    svc["spec"]["template"]["spec"]["containers"][1]["env"].pop()
    svc["spec"]["template"]["spec"]["containers"][1]["ports"] = [{"containerPort": 9091}]
    with pytest.raises(AssertionError):
        admission.test_no_container_uses_a_port_knative_reserves({"probe": [svc]})


def test_the_crd_schemas_of_the_pinned_serving_release(rendered: dict[str, list[Doc]]) -> None:
    crds = crd_schemas.load_crds()
    failures = []
    for where, docs in rendered.items():
        for doc in docs:
            group = group_of(doc)
            assert group in crd_schemas.CORE_GROUPS | crd_schemas.CHECKED_GROUPS | set(crd_schemas.UNCHECKED_GROUPS)
            if group in crd_schemas.CHECKED_GROUPS:
                failures += [
                    f"{where}: {doc['kind']} {doc['metadata']['name']}: {v}" for v in crd_schemas._violations(doc, crds)
                ]
        assert not crd_schemas._violations(llm(docs), crds)
    assert not failures, "\n".join(failures)
    broken = json.loads(json.dumps(llm(rendered["prod+triton-llm"])))
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = {"n": 1}
    assert crd_schemas._violations(broken, crds), "the schema check reads the variant"


def test_hardened_like_every_container(rendered: dict[str, list[Doc]]) -> None:
    hardening.test_every_container_runs_non_root_read_only_and_bounded(rendered)


def test_gpu_requested_on_tainted_gpu_nodes_with_knatives_flags(rendered: dict[str, list[Doc]]) -> None:
    serving.test_triton_tolerates_gpu_taints_and_knative_accepts_it(rendered)
    serving.test_sidecar_probes_are_enabled_and_nothing_probes_through_the_sidecar_port(rendered)
    features = serving.enabled_features()
    for where, docs in rendered.items():
        spec = llm(docs)["spec"]["template"]["spec"]
        assert GPU_TAINT in spec["tolerations"], where
        assert features.get("kubernetes.podspec-tolerations") == "enabled"
        resources = containers(llm(docs))["triton"]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1", where
        assert containers(llm(docs))["model-agent"]["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_the_same_scale_to_zero_and_cold_start_as_triton(rendered: dict[str, list[Doc]]) -> None:
    """min-scale 0, KPA on concurrency, and the triton Service's cold-start budget: scale-down delay, pod
    retention and progress deadline (docs/operations.md); no timer keeps it up; PROBE_TRITON_URL stays off."""
    autoscaler = scale_to_zero.autoscaler_config()
    scale_to_zero.test_no_periodic_trigger_keeps_a_scale_to_zero_service_up(rendered)
    same = (
        "autoscaling.knative.dev/class",
        "autoscaling.knative.dev/metric",
        "autoscaling.knative.dev/min-scale",
        "autoscaling.knative.dev/scale-down-delay",
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
        "serving.knative.dev/progress-deadline",
    )
    base = yaml.safe_load((KNATIVE / "base" / "services" / "triton.yaml").read_text())
    for where, docs in rendered.items():
        ann = llm(docs)["spec"]["template"]["metadata"]["annotations"]
        assert ann["autoscaling.knative.dev/min-scale"] == "0", where
        assert {k: ann[k] for k in same} == {k: base["spec"]["template"]["metadata"]["annotations"][k] for k in same}
        idle = scale_to_zero.idle_before_zero_s(llm(docs), autoscaler)
        assert idle is not None and idle == scale_to_zero.idle_before_zero_s(base, autoscaler), where
        assert config(docs)["PROBE_TRITON_URL"] == "false", where
        sinks = [p["spec"]["sink"]["ref"]["name"] for p in of_kind(docs, "PingSource").values()]
        assert NAME not in sinks, f"{where}: a PingSource would wake the GPU"
        assert int(ann["autoscaling.knative.dev/max-scale"]) >= 1


def test_a_stream_fits_in_what_knative_allows(rendered: dict[str, list[Doc]]) -> None:
    """timeoutSeconds at most config-defaults max-revision-timeout-seconds (knative/serving knative-v1.23.0,
    config/core/configmaps/defaults.yaml, in the release fixture): a larger one is refused at admission."""
    core = (knative_release("serving") / "serving-core.yaml").read_text()
    defaults = core[core.index("name: config-defaults") :]
    ceiling = re.search(r'^\s*max-revision-timeout-seconds: "(\d+)"', defaults, re.M)
    assert ceiling
    for where, docs in rendered.items():
        timeout = llm(docs)["spec"]["template"]["spec"]["timeoutSeconds"]
        assert 300 <= timeout <= int(ceiling.group(1)), where


def test_the_image_is_pinned_maintained_and_the_triton_release(rendered: dict[str, list[Doc]]) -> None:
    for where, docs in rendered.items():
        triton_image = containers(ksvcs(docs)["triton"])["triton"]["image"]
        image = containers(llm(docs))["triton"]["image"]
        match = VLLM_IMAGE.fullmatch(image)
        assert match, f"{where}: {image} is not NGC's <YY.MM>-vllm-python-py3 Triton"
        release = (int(match.group("yy")), int(match.group("mm")))
        assert release >= versions.TRITON_FLOOR, f"{where}: Triton {release} lacks the fixes of bulletin 5687"
        assert triton_image == f"nvcr.io/nvidia/tritonserver:{match.group('yy')}.{match.group('mm')}-py3", (
            f"{where}: triton-llm runs another Triton release than the triton Service ({triton_image})"
        )
        for c in containers(llm(docs)).values():
            found = terraform_rules.IMAGE.match(c["image"])
            assert found, f"{where}: {c['image']} is not registry/repository:tag"
            tag = found.group("tag")
            assert found.group("digest") or (tag and tag != "latest" and re.search(r"\d+[.-]\d+", tag)), c["image"]
            terraform_rules._source_allowed(found.group("repo"), f"{where}: {NAME}/{c['name']}")
    assert not VLLM_IMAGE.fullmatch("nvcr.io/nvidia/tritonserver:latest-vllm-python-py3")


def test_the_model_agent_serves_the_allowed_backend_with_the_triton_agents_image(
    rendered: dict[str, list[Doc]], platform: dict[str, list[Doc]]
) -> None:
    registration = json.loads((EXAMPLE / "registration.json").read_text())
    for where, docs in {**rendered, **platform}.items():
        agent = containers(llm(docs))["model-agent"]
        assert agent["image"] == containers(ksvcs(docs)["triton"])["model-agent"]["image"], where
        assert agent["command"] == ["kinfer", "agent"]
        backend = env(agent)["AGENT_BACKEND"]["value"]
        assert env(agent)["AGENT_TRITON_HTTP"]["value"] == "http://127.0.0.1:8000"
        if where in rendered:
            patterns = config(docs)["BACKEND_ALLOWLIST"].split(",")
            assert any(fnmatch.fnmatchcase(backend, p) for p in patterns), f"{where}: the registry refuses {backend}"
            assert registration["backend_url"] == backend
            assert backend != config(docs)["TRITON_URL"], "its own backend, not the triton Service's"
    assert containers(llm(platform["static keys"]))["model-agent"]["image"] == PLATFORM_VALUES["local.agent_image"]


def test_the_admin_key_guards_the_repository_api_of_both_tritons(rendered: dict[str, list[Doc]]) -> None:
    for where, docs in rendered.items():
        server = containers(llm(docs))["triton"]
        for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
            apis, key, value = triton_admin._restricted(server["args"], flag)
            assert triton_admin.RESTRICTED <= apis and "inference" not in apis, where
            assert (key, value) == ("kinfer-triton-admin-key", "$(TRITON_ADMIN_KEY)")
        assert triton_admin._readers(docs) == {
            "triton/triton",
            "triton/model-agent",
            f"{NAME}/triton",
            f"{NAME}/model-agent",
        }, where


# -- secrets -------------------------------------------------------------------------------------------------
SECRET_NAMES = re.compile(r"TOKEN|SECRET|PASSWORD|_KEY\b|_KEY_ID\b|DATABASE_URL|REDIS_URL", re.I)


def test_no_secret_inline(rendered: dict[str, list[Doc]], platform: dict[str, list[Doc]]) -> None:
    for where, docs in {**rendered, **platform}.items():
        assert not of_kind(docs, "Secret"), f"{where}: a Secret in the manifests"
        for c in containers(llm(docs)).values():
            for name, e in env(c).items():
                if SECRET_NAMES.search(name):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], f"{where}: {c['name']} {name}"
        hf = env(containers(llm(docs))["triton"])["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert hf == {"name": "kinfer-hf-token", "key": "HF_TOKEN", "optional": True}, where
        for c in containers(ksvcs(docs)["triton"]).values():
            assert "HF_TOKEN" not in env(c), "only triton-llm reads the Hugging Face token"
        assert "HF_TOKEN" not in env(containers(llm(docs))["model-agent"])
    for path in EXAMPLE.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"hf_[A-Za-z0-9]{20,}|\"(hf_token|token|use_auth_token)\"", text), f"{path}: a token"


def test_the_agents_s3_keys_follow_the_workload_identity_switch(platform: dict[str, list[Doc]]) -> None:
    """The read-only S3 user of the triton Service, an optional reference: with a workload identity terraform
    creates no kinfer-s3-* Secret, and the pod still starts (S3_CREDENTIALS=ambient)."""
    for where, docs in platform.items():
        refs = containers(llm(docs))["model-agent"]["envFrom"]
        assert {"secretRef": {"name": "kinfer-s3-triton", "optional": True}} in refs, where
        assert {"configMapRef": {"name": "kinfer-config"}} in refs
    assert config(platform["workload identity"])["S3_CREDENTIALS"] == "ambient"
    assert config(platform["static keys"])["S3_CREDENTIALS"] == "static"


# -- the network ---------------------------------------------------------------------------------------------
def test_network_flows(rendered: dict[str, list[Doc]]) -> None:
    prod = rendered["prod+triton-llm"]
    system = render(KNATIVE / "system")
    policies = (
        network._with_ns(prod, network.NS["functions"])
        + network._with_ns(render(KNATIVE / "data"), network.NS["data"])
        + network._with_ns(render(KNATIVE / "strimzi"), network.NS["kafka"])
        + system
    )
    network.test_every_flow_the_platform_needs_is_allowed(prod, policies)
    network.test_what_must_stay_closed_is_closed(prod, policies)
    pod = (network.NS["functions"], network._pod_labels(llm(prod)))
    infer = (network.NS["functions"], network._pod_labels(ksvcs(prod)["infer"]))
    assert network.allowed(policies, network.KOURIER[0], pod, 8013), "Kourier -> triton-llm's queue-proxy (h2c)"
    assert network.allowed(policies, network.ACTIVATOR, pod, 8013), "the activator holds requests while it wakes"
    assert network.allowed(policies, pod, (network.NS["data"], {"app": "minio"}), 9000), "the agent reads S3"
    for port in (8000, 8001, 8002, 8089):
        assert not network.allowed(policies, infer, pod, port), f"function pod -> triton-llm pod :{port}"
        assert not network.allowed(policies, network.STRANGER, pod, port), f"any pod -> triton-llm pod :{port}"
    weights = of_kind(prod, "NetworkPolicy")["allow-llm-weights-egress"]["spec"]
    callbacks = of_kind(prod, "NetworkPolicy")["allow-callback-egress"]["spec"]
    assert weights["podSelector"]["matchExpressions"] == [
        {"key": "serving.knative.dev/service", "operator": "In", "values": [NAME]}
    ]
    assert weights["policyTypes"] == ["Egress"] and "ingress" not in weights
    assert weights["egress"] == callbacks["egress"], "HTTPS to public addresses only, as the callbacks"


# -- the model ----------------------------------------------------------------------------------------------
def _config() -> Any:
    return tritonconfig.parse((EXAMPLE / "package" / "config.pbtxt").read_text())


def _interface(config: Any) -> dict[tuple[str, str], tuple[str, tuple[int, ...], bool]]:
    from tritonclient.grpc import model_config_pb2

    found = {}
    for role, items in (("input", config.input), ("output", config.output)):
        for t in items:
            optional = bool(t.optional) if role == "input" else False
            found[(role, t.name)] = (model_config_pb2.DataType.Name(t.data_type), tuple(t.dims), optional)
    return found


def test_the_package_is_a_vllm_model_with_the_vllm_backends_interface() -> None:
    config = _config()
    assert config.backend == "vllm" and not config.platform
    assert config.model_transaction_policy.decoupled, "the vLLM backend asserts the decoupled policy"
    assert config.max_batch_size == 0, "vLLM batches itself; its auto-complete sets 0"
    assert _interface(config) == VLLM_BACKEND
    engine = json.loads((EXAMPLE / "package" / "1" / "model.json").read_text())
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", engine["model"]), "a Hugging Face model id"
    assert engine.get("tensor_parallel_size", 1) == 1, "one GPU per replica, as the Service requests"
    assert not engine.get("trust_remote_code"), "no code from the Hub runs in Triton"


def test_kinfer_accepts_the_package_and_the_registration(tmp_path: Path) -> None:
    """The package passes the checks of a push (shared.lifecycle.packages, the config normalised as stored)
    and the registration those of POST /v1/models, naming the backend the component allows."""
    archive = tmp_path / "llm.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted((EXAMPLE / "package").rglob("*")):
            tar.add(path, arcname=path.relative_to(EXAMPLE / "package").as_posix(), recursive=False)
    body = json.loads((EXAMPLE / "registration.json").read_text())
    package = packages.unpack(archive, tmp_path / "out", body["triton_model"], 1 << 20)
    assert package.version_files == ["model.json"]
    stored = tritonconfig.normalise(package.config, body["triton_model"])
    assert tritonconfig.parse(stored).backend == "vllm"
    row = registry.validate_create(body, artifacts.EXTRA_FIELDS)
    assert row["backend_urls"] == [body["backend_url"]] and row["triton_model"] == body["triton_model"]
    assert body["upload"] is True and body["metadata"]["task"] == "text-generation"
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    literals = dict(item.split("=", 1) for item in component["configMapGenerator"][0]["literals"])
    assert fnmatch.fnmatchcase(body["backend_url"], literals["BACKEND_ALLOWLIST"])


def test_the_demo_model_tiny_lm_has_the_same_interface() -> None:
    """contracts.md: tiny_lm is a drop-in for the vLLM backend, so the OpenAI routes serve either. Names,
    types and optionality match; a shape of tiny_lm is the vLLM backend's or wider (-1 takes a [1] answer)."""
    tiny = _interface(tritonconfig.parse((ROOT / "models" / "repository" / "tiny_lm" / "config.pbtxt").read_text()))
    vllm = _interface(_config())
    assert set(tiny) == set(vllm)
    for key, (dtype, dims, optional) in vllm.items():
        t_dtype, t_dims, t_optional = tiny[key]
        assert (t_dtype, t_optional) == (dtype, optional), key
        assert len(t_dims) == len(dims) and all(t in (d, -1) for t, d in zip(t_dims, dims, strict=True)), key


# -- terraform --------------------------------------------------------------------------------------------
def test_terraform_switches_the_variant_on_with_llm_backend() -> None:
    root = named(parse(TF)["variable"])
    assert variable_default(TF, "llm_backend") == "none"
    assert 'contains(["none", "vllm"], var.llm_backend)' in str(root["llm_backend"]["validation"])
    assert root["hf_token"].get("sensitive") is True and variable_default(TF, "hf_token") == ""
    call = named(parse(TF)["module"])["platform"]
    assert unquote(call["llm_backend"]) == "${var.llm_backend}" and unquote(call["hf_token"]) == "${var.hf_token}"
    text = (PLATFORM / "main.tf").read_text()
    assert 'var.llm_backend != "none" ? ["${local.knative_dir}/components/triton-llm"] : []' in text
    assert 'llm_url    = "triton-llm.${var.namespace}.svc.cluster.local:80"' in text
    assert (
        'var.llm_backend != "none" ? { BACKEND_ALLOWLIST = local.llm_url, PROBE_SKIP_BACKENDS = local.llm_url } : {}'
        in text
    ), "terraform must allow the Service as a backend and keep the probe off it (it scales to zero)"
    assert "merge(local.config, local.llm_config)" in text
    # The AGENT_BACKEND of this namespace, guarded by a test of the entry's name.
    assert '{ op = "test", path = "/spec/template/spec/containers/1/env/0/name", value = "AGENT_BACKEND" }' in text
    assert '{ op = "replace", path = "/spec/template/spec/containers/1/env/0/value", value = local.llm_url }' in text
    secret = typed(parse(PLATFORM)["resource"], "kubernetes_secret")["hf_token"]
    assert 'var.llm_backend != "none"' in str(secret["count"]) and "nonsensitive" in str(secret["count"])
    assert unquote(secret["metadata"][0]["name"]) == "kinfer-hf-token"
    assert "kubernetes_secret.hf_token" in str(typed(parse(PLATFORM)["resource"], "kustomization_resource")["p0"])


def test_the_agent_backend_patch_points_at_the_first_env_entry(rendered: dict[str, list[Doc]]) -> None:
    for docs in rendered.values():
        first = containers(llm(docs))["model-agent"]["env"][0]
        assert first["name"] == "AGENT_BACKEND" and list(containers(llm(docs)))[1] == "model-agent"


def test_docs_and_readme_point_at_the_production_path() -> None:
    text = (ROOT / "docs" / "llm.md").read_text()
    for needed in ("llm_backend", "kinfer-hf-token", "Prefer: wait", "progress-deadline", "TensorRT-LLM", "GPU"):
        assert needed in text, needed
    # vllm_backend's TritonSamplingParams.from_dict hands every key to vLLM's SamplingParams (an unknown one
    # fails the request): the sampling parameters the page documents are SamplingParams fields.
    for key in SAMPLING_KEYS:
        assert f"`{key}`" in text, key
    assert "docs/llm.md" in (ROOT / "README.md").read_text()
