"""Two installs on one Kafka share no topic and no consumer group (issue 19: the names were fixed, so a
second install read and wrote the first one's topics, and the two batch-worker groups split each other's
partitions).

Every topic and consumer-group name starts with the install name: terraform's ``install_name`` (root
``kafka_names``, patched into the overlay by the platform module, into the Strimzi KafkaTopics by the kafka
module and into MinIO's notification target by the data module), and for the kustomize overlays their
``install.yaml`` through knative/components/install-name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    KNATIVE,
    OVERLAYS,
    TF,
    Doc,
    copy_overlay,
    local_values,
    named,
    of_kind,
    parse,
    render,
    render_platform,
    typed,
    unquote,
)

NAMES = ("kinfer", "staging")


def kafka_names(docs: list[Doc]) -> tuple[set[str], set[str]]:
    """(topics, consumer groups) the rendered eventing resources use."""
    topics = {s["spec"]["topic"] for s in of_kind(docs, "KafkaSink", "eventing.knative.dev").values()}
    sources = of_kind(docs, "KafkaSource", "sources.knative.dev").values()
    topics |= {t for s in sources for t in s["spec"]["topics"]}
    return topics, {s["spec"]["consumerGroup"] for s in sources}


def _owned_by(name: str, topics: set[str], groups: set[str]) -> None:
    assert topics and groups
    assert all(t.startswith(f"{name}.") for t in topics), topics
    assert all(g.startswith(f"{name}-") for g in groups), groups


def _with_install_name(tmp: Path, overlay: str, name: str) -> list[Doc]:
    directory = copy_overlay(tmp, overlay)
    install = yaml.safe_load((directory / "install.yaml").read_text())
    install["data"]["INSTALL_NAME"] = name
    (directory / "install.yaml").write_text(yaml.safe_dump(install))
    return render(directory, "--load-restrictor=LoadRestrictionsNone")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_two_install_names_in_an_overlay_share_no_topic_or_group(tmp_path: Path, overlay: str) -> None:
    found = {}
    for name in NAMES:
        docs = _with_install_name(tmp_path / name, overlay, name)
        topics, groups = kafka_names(docs)
        _owned_by(name, topics, groups)
        assert "kinfer-install" not in of_kind(docs, "ConfigMap"), "install.yaml is kustomize's, never applied"
        found[name] = (topics, groups)
    (topics_a, groups_a), (topics_b, groups_b) = found.values()
    assert not topics_a & topics_b and not groups_a & groups_b
    assert len(topics_a) == len(topics_b) and len(groups_a) == len(groups_b)
    assert found["kinfer"] == kafka_names(render(KNATIVE / "overlays" / overlay)), "the overlay's own name is kinfer"


def terraform_kafka_names(install_name: str) -> dict[str, str]:
    """terraform/main.tf's kafka_names for one install_name."""
    found = {}
    for key, value in local_values(TF)["kafka_names"].items():
        if key != "__is_block__":
            text = unquote(value)
            assert "${" in text, f"kafka_names.{key} = {text}: not derived from install_name"
            found[key] = text.replace("${var.install_name}", install_name)
            assert "${" not in found[key], f"kafka_names.{key}: {text}"
    return found


def _platform(tmp: Path, install_name: str) -> list[Doc]:
    values: dict[str, Any] = {
        "var.image": "r.example.com/k:1",
        "local.agent_image": "r.example.com/k:1",
        "var.data_namespace": "kinfer-data",
    }
    values.update({f"var.kafka_names.{k}": v for k, v in terraform_kafka_names(install_name).items()})
    return render_platform(tmp, "prod", values)


def test_two_terraform_install_names_share_no_topic_or_group(tmp_path: Path) -> None:
    found = {}
    for name in NAMES:
        expected = terraform_kafka_names(name)
        topics, groups = kafka_names(_platform(tmp_path / name, name))
        _owned_by(name, topics, groups)
        assert topics | groups == set(expected.values()), "the platform uses exactly kafka_names"
        found[name] = topics | groups
    assert not found["kinfer"] & found["staging"]
    default = kafka_names(render(KNATIVE / "overlays" / "prod"))
    assert found["kinfer"] == default[0] | default[1], "terraform's formula is the overlays' one"


def test_install_name_reaches_the_kafka_topics_and_minio() -> None:
    root = parse(TF)
    variables = named(root["variable"])
    assert unquote(variables["install_name"]["default"]) == "kinfer"
    calls = named(root["module"])
    assert calls["platform"]["kafka_names"] == "${local.kafka_names}"
    topics = str(calls["kafka"]["topics"])
    assert "local.kafka_names.chunk_topic" in topics and "local.kafka_names.request_topic" in topics
    assert calls["data"]["batch_request_topic"] == "${local.kafka_names.request_topic}"
    strimzi = typed(parse(TF / "modules" / "kafka")["data"], "kustomization_overlay")["strimzi"]
    by_target = {unquote(p["target"][0].get("name")): str(p["patch"]) for p in strimzi["patches"]}
    assert (
        "var.topics.chunks" in by_target["kinfer-batch-chunks"]
        and "/spec/topicName" in by_target["kinfer-batch-chunks"]
    )
    assert "var.topics.requests" in by_target["kinfer-batch-requests"]
    topic_names = {t["metadata"]["name"] for t in of_kind(render(KNATIVE / "strimzi"), "KafkaTopic").values()}
    assert {"kinfer-batch-chunks", "kinfer-batch-requests"} == topic_names
    minio = (TF / "modules" / "data" / "main.tf").read_text()
    assert re.search(r"MINIO_NOTIFY_KAFKA_TOPIC_KINFER\s+= var.batch_request_topic", minio)
