"""Every container non-root, read-only root filesystem (writable dirs are emptyDirs), requests and
limits; the data services and jobs terraform creates bounded too; the public S3 route narrowed to
presigned GET/PUT of objects in the two batch buckets."""

from __future__ import annotations

import re

import pytest

from tests.deploy.support import KNATIVE, OVERLAYS, S3_ROUTE_VALUES, TF, Doc, render, render_with_component, s3_route


def _pod_specs(docs: list[Doc]) -> dict[str, Doc]:
    found = {}
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec")
        if spec and "containers" in spec:
            found[f"{d['kind']}/{d['metadata']['name']}"] = spec
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    found = {o: render(KNATIVE / "overlays" / o) for o in OVERLAYS}
    found["prod+triton-warm"] = render_with_component(tmp_path_factory.mktemp("w"), "prod", "triton-warm")
    found["jobs"] = render(KNATIVE / "jobs")
    return found


def test_every_container_runs_non_root_read_only_and_bounded(rendered: dict[str, list[Doc]]) -> None:
    failures = []
    for where, docs in rendered.items():
        for name, spec in _pod_specs(docs).items():
            pod_ctx = spec.get("securityContext", {})
            for c in spec["containers"] + spec.get("initContainers", []):
                ctx = {**pod_ctx, **c.get("securityContext", {})}
                label = f"{where} {name}/{c['name']}"
                if not ctx.get("runAsNonRoot") or ctx.get("runAsUser", 1) == 0:
                    failures.append(f"{label}: may run as root")
                if not c.get("securityContext", {}).get("readOnlyRootFilesystem"):
                    failures.append(f"{label}: writable root filesystem")
                if c.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
                    failures.append(f"{label}: privilege escalation")
                if "ALL" not in c.get("securityContext", {}).get("capabilities", {}).get("drop", []):
                    failures.append(f"{label}: capabilities kept")
                res = c.get("resources", {})
                for kind in ("requests", "limits"):
                    for r in ("cpu", "memory"):
                        if r not in res.get(kind, {}):
                            failures.append(f"{label}: no {kind}.{r}")
                volumes = {v["name"]: v for v in spec.get("volumes", [])}
                for m in c.get("volumeMounts", []):
                    if not m.get("readOnly") and "emptyDir" not in volumes.get(m["name"], {}):
                        failures.append(f"{label}: writable mount {m['mountPath']} is not an emptyDir")
    assert not failures, "\n".join(failures)


def test_the_data_services_and_their_jobs_are_bounded() -> None:
    data = (TF / "modules" / "data" / "main.tf").read_text()
    # CloudNativePG Cluster, Valkey, MinIO and each of the MinIO chart's setup jobs.
    bounded = re.findall(
        r"resources\s+=\s+\{ requests = \{ cpu = \"[^\"]+\", memory = \"[^\"]+\" \}, limits = \{ cpu", data
    )
    assert len(bounded) >= 3 + 4, f"only {len(bounded)} bounded resource blocks in modules/data"
    for job in ("makeBucketJob", "makePolicyJob", "makeUserJob", "customCommandJob"):
        assert re.search(rf"{job}\s+= \{{ resources = \{{ requests", data), job
    kafka = render(KNATIVE / "strimzi")
    for doc in kafka:
        if doc["kind"] == "KafkaNodePool":
            assert {"requests", "limits"} <= set(doc["spec"]["resources"])
        if doc["kind"] == "Kafka":
            for op in ("topicOperator", "userOperator"):
                assert {"requests", "limits"} <= set(doc["spec"]["entityOperator"][op]["resources"])


def _route_allows(route: Doc, method: str, path: str, query: dict[str, str]) -> bool:
    for rule in route["spec"]["rules"]:
        for m in rule["matches"]:
            if m.get("method", method) != method:
                continue
            p = m["path"]
            ok = re.fullmatch(p["value"], path) if p["type"] == "RegularExpression" else path.startswith(p["value"])
            if not ok:
                continue
            if all(q["name"] in query and re.fullmatch(q["value"], query[q["name"]]) for q in m.get("queryParams", [])):
                return True
    return False


def test_the_public_s3_route_allows_only_presigned_batch_transfers() -> None:
    route = s3_route(S3_ROUTE_VALUES)
    sig = {"X-Amz-Signature": "ab" * 32, "X-Amz-Algorithm": "AWS4-HMAC-SHA256"}
    inputs, results = S3_ROUTE_VALUES["var.input_bucket"], S3_ROUTE_VALUES["var.results_bucket"]
    assert _route_allows(route, "PUT", f"/{inputs}/jobs/abc/input.jsonl", sig)
    assert _route_allows(route, "GET", f"/{results}/jobs/abc/results.jsonl", sig)
    refused = [
        ("GET", f"/{results}/jobs/abc/results.jsonl", {}),  # not presigned
        ("GET", f"/{results}/", sig),  # listing
        ("GET", f"/{results}", sig),
        ("PUT", f"/{results}/x", sig),  # results are read only
        ("DELETE", f"/{inputs}/x", sig),
        ("POST", f"/{inputs}/x", sig),  # multipart, deletes
        ("GET", "/triton-models/models/m/1/model.onnx", sig),
        ("GET", "/minio/admin/v3/info", sig),
        ("GET", "/", sig),
    ]
    for method, path, query in refused:
        assert not _route_allows(route, method, path, query), f"{method} {path} {sorted(query)}"
    for rule in route["spec"]["rules"]:
        assert all(m.get("method") in {"GET", "PUT"} for m in rule["matches"])
        assert all(m["path"]["type"] == "RegularExpression" for m in rule["matches"])


def test_the_route_checker_would_see_the_old_route() -> None:
    """The route before this control (every path, every method) fails the check above."""
    old = {"spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]}}
    assert _route_allows(old, "GET", "/minio/admin/v3/info", {})
