"""Only the event transport may send events to the event functions (issue 20): the install turns on Knative
Eventing's OIDC sender authentication, and the prod overlay makes batch-intake, batch-worker and
batch-deadletter verify every sender's token (EVENT_AUTH=oidc, shared/access/eventauth.py).

The rules, from the upstream sources at the pinned tags:
- knative/eventing knative-v1.22.2, config/core/configmaps/features.yaml (in the release fixture
  eventing-core.yaml): ``authentication-oidc: "disabled"`` by default in ``knative-eventing/config-features``;
  enabled, every source sends its sink ``Authorization: Bearer <JWT>``.
- the same tag, pkg/auth/token_provider.go: the JWT comes from the TokenRequest API, ``Audiences`` =
  the sink's audience; pkg/auth/serviceaccount.go: it is a token of the source's OIDC service account,
  ``GetOIDCServiceAccountNameForResource``: ``<name>-oidc-<group>-<kind>`` lowercased (kmeta.ChildName:
  kept whole up to 63 characters), so the subject is ``system:serviceaccount:<namespace>:<that name>``.
- knative.dev/pkg duckv1.Destination ``audience``: "only needs to be set if the target is not an
  Addressable" (a Knative Service publishes none); the KafkaSource CRD of eventing-kafka-broker
  knative-v1.22.3 (release fixture eventing-kafka-controller.yaml) has ``spec.sink.audience`` and
  ``spec.delivery.deadLetterSink.audience``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.deploy.support import (
    KNATIVE,
    PLATFORM,
    TF,
    container,
    heredoc,
    knative_release,
    ksvcs,
    local_values,
    of_kind,
    parse,
    render,
    typed,
    unquote,
)

OIDC_SUFFIX = "-oidc-sources.knative.dev-kafkasource"  # -oidc-<group>-<kind> of a KafkaSource
EVENT_FUNCTIONS = {"batch-intake", "batch-worker", "batch-deadletter"}


def _config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(of_kind(docs, "ConfigMap")["kinfer-config"]["data"])


def _release_docs(key: str, name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((knative_release(key) / name).read_text()) if d]


def test_the_pinned_eventing_release_has_the_flag_off_and_sources_that_carry_an_audience() -> None:
    features = next(
        d for d in _release_docs("eventing", "eventing-core.yaml") if d["metadata"]["name"] == "config-features"
    )
    assert features["data"]["authentication-oidc"] == "disabled"  # so the install must turn it on
    crd = next(
        d
        for d in _release_docs("eventing_kafka", "eventing-kafka-controller.yaml")
        if d.get("kind") == "CustomResourceDefinition" and d["metadata"]["name"] == "kafkasources.sources.knative.dev"
    )
    for version in crd["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert "audience" in spec["sink"]["properties"], version["name"]
        assert "audience" in spec["delivery"]["properties"]["deadLetterSink"]["properties"], version["name"]


def test_terraform_turns_on_authentication_oidc_in_knative_eventing() -> None:
    overlay = typed(parse(TF / "modules" / "knative")["data"], "kustomization_overlay")["eventing"]
    patches = [
        yaml.safe_load(heredoc(p["patch"]))
        for p in overlay.get("patches", [])
        if {k: unquote(v) for k, v in p["target"][0].items()}.get("name") == "config-features"
    ]
    assert [p["metadata"]["namespace"] for p in patches] == ["knative-eventing"]
    assert patches[0]["data"]["authentication-oidc"] == "enabled"


def test_the_prod_overlay_verifies_every_sender_and_each_source_names_its_sinks_audience() -> None:
    docs = render(KNATIVE / "overlays" / "prod")
    config = _config(docs)
    assert config["EVENT_AUTH"] == "oidc"
    sources = of_kind(docs, "KafkaSource", "sources.knative.dev")
    subjects = set(config["EVENT_OIDC_SUBJECTS"].split(","))
    expected = set()
    sinks = set()
    for name, source in sources.items():
        account = f"{name}{OIDC_SUFFIX}".lower()
        assert len(account) <= 63, f"{account}: kmeta.ChildName would hash it"
        expected.add(f"system:serviceaccount:kinfer:{account}")
        spec = source["spec"]
        destinations = [spec["sink"]]
        if spec.get("delivery", {}).get("deadLetterSink"):
            destinations.append(spec["delivery"]["deadLetterSink"])
        for destination in destinations:
            service = destination["ref"]["name"]
            sinks.add(service)
            audience = config["EVENT_OIDC_AUDIENCE"].replace("{service}", service)
            assert destination.get("audience") == audience, f"{name} -> {service}: no token for its audience"
    assert subjects == expected
    assert sinks == EVENT_FUNCTIONS
    services = ksvcs(docs)
    for name in sinks:
        spec = services[name]["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in container(services[name]).get("volumeMounts", [])}
        volume = next(v for v in spec["volumes"] if v["name"] == "event-oidc")
        paths = {p["path"] for s in volume["projected"]["sources"] for p in s.get("configMap", {}).get("items", [])}
        paths |= {
            s["serviceAccountToken"]["path"] for s in volume["projected"]["sources"] if "serviceAccountToken" in s
        }
        files = {str(Path(mounts["event-oidc"]) / p) for p in paths}
        assert {config["EVENT_OIDC_CA_FILE"], config["EVENT_OIDC_TOKEN_FILE"]} <= files, name


def test_the_dev_overlay_and_the_local_stack_send_no_tokens() -> None:
    assert _config(render(KNATIVE / "overlays" / "dev"))["EVENT_AUTH"] == "none"


def test_terraform_sets_the_subjects_of_its_namespace_and_the_clusters_issuer() -> None:
    config = local_values(PLATFORM)["config"]
    subjects = unquote(config["EVENT_OIDC_SUBJECTS"])
    for source in ("batch-worker-source", "batch-intake-source"):
        assert f"{source}{OIDC_SUFFIX}" in subjects and "${var.namespace}" in subjects
    assert unquote(config["EVENT_OIDC_ISSUER"]) == "${var.service_account_issuer}"
