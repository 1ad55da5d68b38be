"""NetworkPolicies: every namespace Kinfer creates denies by default, and every flow the platform
needs (derived from the rendered manifests: env endpoints, eventing wiring, the S3 route) is allowed,
while the flows it must not have (a function pod to Triton's own ports, any pod to Kafka) are not.
Knative's own namespaces (knative/system) deny ingress by default: every flow Knative needs, derived
from the release manifests of tests/fixtures/releases (webhooks, Kourier, activator, KafkaSink
receiver), is still allowed, and a pod of another namespace reaches none of Kinfer's Services.

A small evaluator of networking.k8s.io/v1 semantics: a connection is allowed when the source's
namespace admits it as egress (no policy selects the pod for Egress, or one rule matches) and the
destination's admits it as ingress. Namespaces are matched by kubernetes.io/metadata.name."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.support import KNATIVE, TF, Doc, heredoc, knative_release, of_kind, parse, render, typed, unquote

NS = {"functions": "kinfer", "data": "kinfer-data", "kafka": "kafka"}
KNATIVE_NS = {"serving": "knative-serving", "kourier": "kourier-system", "eventing": "knative-eventing"}
# The Kubernetes API server calling a webhook: from no pod namespace (its address depends on the cluster).
API_SERVER = ("<kube-apiserver>", {"component": "kube-apiserver"})
KNATIVE_POD = {"serving.knative.dev/service": "x"}


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
    return True


def _peer_match(peer: dict[str, Any], own_ns: str, ns: str, labels: dict[str, str]) -> bool:
    if "ipBlock" in peer:
        return False  # cluster pods are not matched by the CIDRs of external endpoints here
    if "namespaceSelector" in peer:
        if not _labels_match(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ns}):
            return False
    elif ns != own_ns:
        return False
    return _labels_match(peer.get("podSelector", {}), labels)


def _port_match(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    return not ports or any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports)


def _admits(policies: list[Doc], direction: str, pod: tuple[str, dict], peer: tuple[str, dict], port: int, proto: str):
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    ns, labels = pod
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", ns) == ns
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and _labels_match(p["spec"]["podSelector"], labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(key, []) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_match(x, ns, peer[0], peer[1]) for x in peers)) and _port_match(
                rule.get("ports"), port, proto
            ):
                return True
    return False


def allowed(policies: list[Doc], src: tuple[str, dict], dst: tuple[str, dict], port: int, proto: str = "TCP") -> bool:
    return _admits(policies, "Egress", src, dst, port, proto) and _admits(policies, "Ingress", dst, src, port, proto)


def _with_ns(docs: list[Doc], ns: str) -> list[Doc]:
    found = []
    for d in docs:
        if d["kind"] == "NetworkPolicy":
            d = {**d, "metadata": {**d["metadata"], "namespace": d["metadata"].get("namespace", ns)}}
            found.append(d)
    return found


@pytest.fixture(scope="module")
def prod() -> list[Doc]:
    return render(KNATIVE / "overlays" / "prod")


@pytest.fixture(scope="module")
def policies(prod: list[Doc]) -> list[Doc]:
    system = render(KNATIVE / "system")
    assert all(d["metadata"].get("namespace") in KNATIVE_NS.values() for d in system), "knative/system: namespaced"
    return (
        _with_ns(prod, NS["functions"])
        + _with_ns(render(KNATIVE / "data"), NS["data"])
        + _with_ns(render(KNATIVE / "strimzi"), NS["kafka"])
        + system
    )


def _pod_labels(svc: Doc) -> dict[str, str]:
    labels = dict(svc["spec"]["template"]["metadata"].get("labels", {}))
    labels["serving.knative.dev/service"] = svc["metadata"]["name"]
    return labels


def test_every_namespace_kinfer_creates_denies_by_default(policies: list[Doc]) -> None:
    for ns in NS.values():
        deny = [
            p
            for p in policies
            if p["metadata"]["namespace"] == ns
            and p["spec"]["podSelector"] == {}
            and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert deny, f"namespace {ns}: no default-deny NetworkPolicy (podSelector {{}}, Ingress and Egress)"


def test_the_data_and_kafka_policies_are_applied_by_terraform() -> None:
    data = typed(parse(TF / "modules" / "data")["data"], "kustomization_overlay")["network"]
    assert any("knative/data" in str(r) for r in data["resources"])
    resources = parse(TF / "modules" / "data")["resource"]
    assert typed(resources, "kustomization_resource")["network"]
    strimzi = yaml.safe_load((KNATIVE / "strimzi" / "kustomization.yaml").read_text())
    assert "networkpolicy.yaml" in strimzi["resources"]


def _endpoints(prod: list[Doc]) -> dict[str, tuple[str, int]]:
    """Host and port of each endpoint the manifests name, as terraform wires the in-cluster ones."""
    config = of_kind(prod, "ConfigMap")["kinfer-config"]["data"]
    s3 = urlsplit(config["S3_ENDPOINT_URL"])
    triton_host, triton_port = config["TRITON_URL"].rsplit(":", 1)
    data_locals = {}
    for block in parse(TF / "modules" / "data")["locals"]:
        data_locals.update(block)
    pg = unquote(data_locals["postgres_host"]).replace("${local.postgres_cluster}", "kinfer-pg")
    redis = unquote(data_locals["redis_host"])
    return {
        "DATABASE_URL": (pg.replace("${var.namespace}", NS["data"]), 5432),
        "REDIS_URL": (redis.replace("${var.namespace}", NS["data"]), 6379),
        "S3": (s3.hostname or "", s3.port or 80),
        "TRITON_URL": (triton_host, int(triton_port)),
    }


def _namespace_of(host: str) -> str:
    return host.split(".")[1]


# Where Knative sends a request to a cluster-local Service (its ExternalName -> kourier-internal,
# port 80 -> the gateway pod's 8081, tests/fixtures/releases/net-kourier .../kourier.yaml) and the
# KafkaSink receiver (kafka-sink-ingress port 80 -> 8080, eventing-kafka-sink.yaml).
KOURIER = ("kourier-system", {"app": "3scale-kourier-gateway"}), 8081
ACTIVATOR = ("knative-serving", {"app": "activator"})
SINK_RECEIVER = ("knative-eventing", {"app": "kafka-sink-receiver"}), 8080
DISPATCHER = ("knative-eventing", {"app": "kafka-source-dispatcher"})
GATEWAY = ("envoy-gateway-system", {"app.kubernetes.io/name": "envoy"})


def test_every_flow_the_platform_needs_is_allowed(prod: list[Doc], policies: list[Doc]) -> None:
    endpoints = _endpoints(prod)
    bindings = {b["spec"]["subject"]["name"] for b in of_kind(prod, "SinkBinding").values()}
    failures = []
    for name, svc in of_kind(prod, "Service", "serving.knative.dev").items():
        pod = (NS["functions"], _pod_labels(svc))
        # In: Kourier and the activator to queue-proxy (8012; 8013 for h2c Services such as Triton).
        port = (
            8013
            if svc["spec"]["template"]["spec"]["containers"][0].get("ports", [{}])[0].get("name") == "h2c"
            else 8012
        )
        for src in (KOURIER[0], ACTIVATOR):
            if not allowed(policies, src, pod, port):
                failures.append(f"{src[0]} -> {name}:{port}")
        # Out: what its containers' env names.
        env = {e["name"] for c in svc["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
        needs = []
        if "DATABASE_URL" in env:
            needs.append(endpoints["DATABASE_URL"])
        if "REDIS_URL" in env:
            needs.append(endpoints["REDIS_URL"])
        if "S3_ACCESS_KEY_ID" in env:
            needs.append(endpoints["S3"])
        for host, p in needs:
            if not allowed(policies, pod, (_namespace_of(host), {"any": "pod"}), p):
                failures.append(f"{name} -> {host}:{p}")
        if name != "triton" and not allowed(policies, pod, KOURIER[0], KOURIER[1]):
            failures.append(f"{name} -> TRITON_URL {endpoints['TRITON_URL']} via kourier-internal:{KOURIER[1]}")
        if name in bindings and not allowed(policies, pod, SINK_RECEIVER[0], SINK_RECEIVER[1]):
            failures.append(f"{name} -> K_SINK (kafka-sink-receiver:{SINK_RECEIVER[1]})")
        for p in (53,):
            if not allowed(policies, pod, ("kube-system", {"k8s-app": "kube-dns"}), p, "UDP"):
                failures.append(f"{name} -> DNS")
    # The eventing data plane to Kafka (bootstrapServers of the sources and the sink).
    for kind in ("KafkaSource", "KafkaSink"):
        for name, doc in of_kind(prod, kind).items():
            for server in doc["spec"]["bootstrapServers"]:
                host, p = server.rsplit(":", 1)
                broker = (_namespace_of(host), {"strimzi.io/cluster": "kinfer", "strimzi.io/kind": "Kafka"})
                if not allowed(policies, DISPATCHER, broker, int(p)):
                    failures.append(f"{kind} {name} -> {server}")
    broker = (NS["kafka"], {"strimzi.io/cluster": "kinfer", "strimzi.io/kind": "Kafka"})
    minio = (NS["data"], {"app": "minio"})
    if not allowed(policies, minio, broker, 9092):
        failures.append("MinIO notifications -> Kafka 9092")
    if not allowed(policies, GATEWAY, minio, 9000):
        failures.append("Gateway (s3.<domain>) -> MinIO 9000")
    migrate = (NS["functions"], {"app.kubernetes.io/name": "kinfer-db-migrate"})
    if not allowed(policies, migrate, (NS["data"], {"cnpg.io/cluster": "kinfer-pg"}), 5432):
        failures.append("migration Job -> PostgreSQL")
    assert not failures, "flows the platform needs that the NetworkPolicies drop:\n" + "\n".join(failures)


def test_what_must_stay_closed_is_closed(prod: list[Doc], policies: list[Doc]) -> None:
    infer = (NS["functions"], _pod_labels(of_kind(prod, "Service", "serving.knative.dev")["infer"]))
    triton = (NS["functions"], _pod_labels(of_kind(prod, "Service", "serving.knative.dev")["triton"]))
    stranger = ("default", {"app": "anything"})
    for port in (8000, 8001, 8002, 8089):  # Triton's HTTP, gRPC, metrics; the agent
        assert not allowed(policies, infer, triton, port), f"function pod -> Triton pod :{port}"
        assert not allowed(policies, stranger, triton, port), f"any pod -> Triton pod :{port}"
    broker = (NS["kafka"], {"strimzi.io/cluster": "kinfer", "strimzi.io/kind": "Kafka"})
    assert not allowed(policies, stranger, broker, 9092), "any pod -> Kafka"
    assert not allowed(policies, infer, broker, 9092), "a function pod -> Kafka (it goes through the KafkaSink)"
    for port in (5432, 6379, 9000):
        assert not allowed(policies, stranger, (NS["data"], {"app": "minio"}), port), f"any pod -> data :{port}"
    assert not allowed(policies, GATEWAY, (NS["data"], {"cnpg.io/cluster": "kinfer-pg"}), 5432)


def test_the_evaluator_refuses_without_the_allows(prod: list[Doc], policies: list[Doc]) -> None:
    """Without the allow policies, the default-deny drops the flows (the check above can fail)."""
    only_deny = [p for p in policies if p["metadata"]["name"] == "default-deny"]
    infer = (NS["functions"], _pod_labels(of_kind(prod, "Service", "serving.knative.dev")["infer"]))
    assert not allowed(only_deny, KOURIER[0], infer, 8012)
    assert allowed([], KOURIER[0], infer, 8012)


def _render_patched(tmp: Path, folder: Path, module: str, source: str, values: dict[str, str]) -> list[Doc]:
    import os

    overlay = typed(parse(TF / "modules" / module)["data"], "kustomization_overlay")[source]
    patches = []
    for patch in overlay.get("patches", []):
        if not str(unquote(patch["patch"])).startswith("<<"):
            continue
        body = heredoc(patch["patch"])
        for ref, value in values.items():
            body = body.replace("${" + ref + "}", value)
        assert "${" not in body, body
        target = {k: unquote(v) for k, v in patch["target"][0].items() if k != "__is_block__"}
        patches.append({"patch": body, "target": target})
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [os.path.relpath(folder, tmp)], "patches": patches})
    )
    return render(tmp, "--load-restrictor=LoadRestrictionsNone")


def test_terraform_patches_the_namespace_names(tmp_path: Path) -> None:
    data = _render_patched(
        tmp_path / "d",
        KNATIVE / "data",
        "data",
        "network",
        {"var.functions_namespace": "fn", "var.kafka_namespace": "kf"},
    )
    text = yaml.safe_dump_all(data)
    assert "kubernetes.io/metadata.name: fn" in text and "kubernetes.io/metadata.name: kf" in text
    kafka = _render_patched(
        tmp_path / "k",
        KNATIVE / "strimzi",
        "kafka",
        "strimzi",
        {
            "var.topics.chunks": "a.c",
            "var.topics.requests": "a.r",
            "var.groups.worker": "a-w",
            "var.groups.intake": "a-i",
            "var.data_namespace": "dn",
        },
    )
    peers = of_kind(kafka, "Kafka")["kinfer"]["spec"]["kafka"]["listeners"][0]["networkPolicyPeers"]
    assert {"kubernetes.io/metadata.name": "dn"} in [p["namespaceSelector"]["matchLabels"] for p in peers]
    clients = of_kind(kafka, "NetworkPolicy")["allow-kafka-clients"]["spec"]["ingress"][0]["from"]
    assert {"kubernetes.io/metadata.name": "dn"} in [p["namespaceSelector"]["matchLabels"] for p in clients]
    acls = {
        u: [a["resource"]["name"] for a in d["spec"]["authorization"]["acls"]]
        for u, d in of_kind(kafka, "KafkaUser").items()
    }
    assert acls == {
        "kinfer-sink": ["a.c"],
        "kinfer-worker-source": ["a.c", "a-w"],
        "kinfer-intake-source": ["a.r", "a-i"],
        "kinfer-minio": ["a.r"],
    }


# -- Knative's namespaces (knative/system) -------------------------------------------------------
RELEASE_FILES = {
    "serving": ["serving-core.yaml"],
    "kourier": ["kourier.yaml"],
    "eventing": ["eventing-core.yaml"],
    "eventing_kafka": ["eventing-kafka-controller.yaml", "eventing-kafka-source.yaml", "eventing-kafka-sink.yaml"],
}
# net-kourier knative-v1.23.0, pkg/reconciler/ingress/config/config.go: the ports the controller's
# prober sends to every gateway pod (HTTPPortProb, HTTPSPortProb; lister.go picks them).
KOURIER_PROBE_PORTS = (8090, 9443)
STRANGER = ("default", {"app": "anything"})


@pytest.fixture(scope="module")
def release() -> list[Doc]:
    docs = []
    for key, files in RELEASE_FILES.items():
        for name in files:
            docs += [d for d in yaml.safe_load_all((knative_release(key) / name).read_text()) if d]
    return docs


def _workloads(release: list[Doc]) -> dict[tuple[str, str], Doc]:
    return {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d
        for d in release
        if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}
    }


def _pods_of(release: list[Doc], ns: str, selector: dict[str, str]) -> list[Doc]:
    return [
        w
        for (wns, _), w in _workloads(release).items()
        if wns == ns and _labels_match({"matchLabels": selector}, w["spec"]["template"]["metadata"]["labels"])
    ]


def _pod(release: list[Doc], ns: str, name: str) -> tuple[str, dict[str, str]]:
    return ns, _workloads(release)[(ns, name)]["spec"]["template"]["metadata"]["labels"]


def _target_port(workload: Doc, target: int | str) -> int:
    if isinstance(target, int):
        return target
    for c in workload["spec"]["template"]["spec"]["containers"]:
        for port in c.get("ports", []):
            if port.get("name") == target:
                return int(port["containerPort"])
    raise AssertionError(f"{workload['metadata']['name']}: no container port {target}")


def _service_backends(release: list[Doc], ns: str, name: str, port: int) -> list[tuple[tuple[str, dict], int]]:
    """The pods and container port behind Service ns/name:port."""
    svc = next(
        d
        for d in release
        if d["kind"] == "Service" and (d["metadata"]["namespace"], d["metadata"]["name"]) == (ns, name)
    )
    spec_port = next(p for p in svc["spec"]["ports"] if p["port"] == port)
    pods = _pods_of(release, ns, svc["spec"]["selector"])
    assert pods, f"Service {ns}/{name} selects no workload of the release"
    return [
        ((ns, w["spec"]["template"]["metadata"]["labels"]), _target_port(w, spec_port.get("targetPort", port)))
        for w in pods
    ]


def _webhook_services(release: list[Doc]) -> set[tuple[str, str, int]]:
    """Every Service the API server calls: admission webhooks and CRD conversion webhooks."""
    found = set()
    for d in release:
        configs = []
        if d["kind"] in {"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}:
            configs = [w["clientConfig"] for w in d.get("webhooks", [])]
        elif d["kind"] == "CustomResourceDefinition" and d["spec"].get("conversion", {}).get("strategy") == "Webhook":
            configs = [d["spec"]["conversion"]["webhook"]["clientConfig"]]
        for config in configs:
            svc = config["service"]
            found.add((svc["namespace"], svc["name"], int(svc.get("port", 443))))
    return found


def test_knative_namespaces_deny_ingress_by_default(policies: list[Doc]) -> None:
    for ns in KNATIVE_NS.values():
        deny = [
            p
            for p in policies
            if p["metadata"]["namespace"] == ns
            and p["spec"]["podSelector"] == {}
            and p["spec"].get("policyTypes") == ["Ingress"]
            and not p["spec"].get("ingress")
        ]
        assert deny, f"namespace {ns}: no default-deny ingress NetworkPolicy"
        # Egress is left open on purpose (knative/system/networkpolicy.yaml, docs/security.md).
        assert not [p for p in policies if p["metadata"]["namespace"] == ns and "Egress" in p["spec"]["policyTypes"]]


def test_the_api_server_reaches_every_knative_webhook(release: list[Doc], policies: list[Doc]) -> None:
    hooks = _webhook_services(release)
    assert {(ns, name) for ns, name, _ in hooks} == {
        ("knative-serving", "webhook"),
        ("knative-eventing", "eventing-webhook"),
        ("knative-eventing", "kafka-webhook-eventing"),
    }
    for ns, name, port in hooks:
        for pod, target in _service_backends(release, ns, name, port):
            assert allowed(policies, API_SERVER, pod, target), f"API server -> webhook {ns}/{name}:{target}"


def test_every_flow_knative_needs_is_allowed(prod: list[Doc], release: list[Doc], policies: list[Doc]) -> None:
    failures = []
    internal = _service_backends(release, "kourier-system", "kourier-internal", 80)
    sink = _service_backends(release, "knative-eventing", "kafka-sink-ingress", 80)
    activator = _pod(release, "knative-serving", "activator")
    activator_ports = [_target_port(_workloads(release)[activator[0], "activator"], n) for n in ("http1", "h2c")]
    gateway = _pod(release, "kourier-system", "3scale-kourier-gateway")
    controller = _pod(release, "knative-serving", "net-kourier-controller")
    ping = _pod(release, "knative-eventing", "pingsource-mt-adapter")
    dispatcher = _pod(release, "knative-eventing", "kafka-source-dispatcher")
    functions = [
        (NS["functions"], _pod_labels(svc)) for svc in of_kind(prod, "Service", "serving.knative.dev").values()
    ]
    senders = {"public Gateway": GATEWAY, "KafkaSource dispatcher": dispatcher, "PingSource adapter": ping}
    senders.update({f"function {labels['serving.knative.dev/service']}": (ns, labels) for ns, labels in functions})
    for who, src in senders.items():
        for pod, port in internal:
            if not allowed(policies, src, pod, port):
                failures.append(f"{who} -> kourier-internal:{port}")
    bindings = {b["spec"]["subject"]["name"] for b in of_kind(prod, "SinkBinding").values()}
    for ns, labels in functions:
        if labels["serving.knative.dev/service"] in bindings:
            for pod, port in sink:
                if not allowed(policies, (ns, labels), pod, port):
                    failures.append(f"{labels['serving.knative.dev/service']} -> kafka-sink-ingress:{port}")
    for port in activator_ports:
        for who, src in {"Kourier": gateway, "KafkaSource dispatcher": dispatcher}.items():
            if not allowed(policies, src, activator, port):
                failures.append(f"{who} -> activator:{port}")
    xds = _target_port(_workloads(release)["knative-serving", "net-kourier-controller"], "http2-xds")
    if not allowed(policies, gateway, controller, xds):
        failures.append(f"Kourier gateway -> net-kourier-controller xDS:{xds}")
    for port in KOURIER_PROBE_PORTS:
        if not allowed(policies, controller, gateway, port):
            failures.append(f"net-kourier-controller prober -> gateway:{port}")
    autoscaler = _pod(release, "knative-serving", "autoscaler")
    websocket = _target_port(_workloads(release)["knative-serving", "autoscaler"], "websocket")
    if not allowed(policies, activator, autoscaler, websocket):
        failures.append(f"activator -> autoscaler:{websocket}")
    assert not failures, "flows Knative needs that knative/system drops:\n" + "\n".join(failures)


def test_no_foreign_pod_reaches_kinfer_through_knative(release: list[Doc], policies: list[Doc]) -> None:
    """A pod of another namespace: not Kourier's internal or external listener, the activator, the sink receiver."""
    gateway = _pod(release, "kourier-system", "3scale-kourier-gateway")
    closed = {
        "kourier-internal": [
            (pod, port) for pod, port in _service_backends(release, "kourier-system", "kourier-internal", 80)
        ],
        "kourier external": [(pod, port) for pod, port in _service_backends(release, "kourier-system", "kourier", 80)],
        "kourier admin/metrics": [(gateway, 9000)],
        "activator": [(_pod(release, "knative-serving", "activator"), p) for p in (8012, 8013, 8112)],
        "kafka-sink-ingress": _service_backends(release, "knative-eventing", "kafka-sink-ingress", 80),
        "job-sink": _service_backends(release, "knative-eventing", "job-sink", 80),
        "request-reply": _service_backends(release, "knative-eventing", "request-reply", 80),
        "net-kourier-controller": [(_pod(release, "knative-serving", "net-kourier-controller"), 18000)],
    }
    opened = [
        f"{name}:{port}"
        for name, targets in closed.items()
        for pod, port in targets
        if allowed(policies, STRANGER, pod, port)
    ]
    assert not opened, f"a pod of another namespace reaches: {opened}"
    function = (NS["functions"], KNATIVE_POD)
    for pod, port in _service_backends(release, "kourier-system", "kourier", 80):
        assert not allowed(policies, function, pod, port), "functions use kourier-internal, never the external listener"


def test_the_knative_policies_are_applied_by_terraform(tmp_path: Path) -> None:
    module = TF / "modules" / "knative"
    overlay = typed(parse(module)["data"], "kustomization_overlay")["network"]
    assert any("knative/system" in str(r) for r in overlay["resources"])
    applied = typed(parse(module)["resource"], "kustomization_resource")["network"]
    for step in ("serving_p2", "eventing_p2", "eventing_kafka_p2"):
        assert f"kustomization_resource.{step}" in str(applied["depends_on"]), f"namespaces first: {step}"
    assert "kustomization_resource.network" in str(named_output(module, "ready")["depends_on"])
    rendered = _render_patched(tmp_path, KNATIVE / "system", "knative", "network", {"var.functions_namespace": "fn"})
    for name in ("allow-internal-ingress", "allow-sink-receiver"):
        doc = next(d for d in rendered if d["metadata"]["name"] == name)
        selected = [p["namespaceSelector"]["matchLabels"] for p in doc["spec"]["ingress"][0]["from"]]
        assert {"kubernetes.io/metadata.name": "fn"} in selected and {
            "kubernetes.io/metadata.name": "kinfer"
        } not in selected
    root = (TF / "main.tf").read_text()
    assert "functions_namespace = var.namespace" in root.split('module "knative"')[1].split("}")[0]


def named_output(module: Path, name: str) -> dict:
    return {unquote(k): v for block in parse(module)["output"] for k, v in block.items()}[name]
