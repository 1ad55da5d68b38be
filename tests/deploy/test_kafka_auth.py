"""Kafka: no unauthenticated listener; one SCRAM-SHA-512 KafkaUser per client with ACLs on its own
topic and group; the KafkaSink and KafkaSources authenticate with Secrets in eventing-kafka-broker's
format (control-plane/pkg/security/secret.go at knative-v1.22.3), which terraform creates."""

from __future__ import annotations

from tests.deploy.support import KNATIVE, PLATFORM, TF, named, of_kind, parse, render

CLIENTS = {"kinfer-sink", "kinfer-worker-source", "kinfer-intake-source", "kinfer-minio"}


def test_every_listener_authenticates_and_acls_are_enforced() -> None:
    kafka = of_kind(render(KNATIVE / "strimzi"), "Kafka")["kinfer"]["spec"]["kafka"]
    for listener in kafka["listeners"]:
        assert listener.get("authentication", {}).get("type") in {"scram-sha-512", "tls"}, listener["name"]
        assert listener.get("networkPolicyPeers"), f"{listener['name']}: Strimzi's policy would admit every pod"
    assert kafka["authorization"]["type"] == "simple"


def test_each_client_has_a_user_limited_to_its_topic_and_group() -> None:
    docs = render(KNATIVE / "strimzi")
    users = of_kind(docs, "KafkaUser")
    assert set(users) == CLIENTS
    topics = {t["spec"]["topicName"] for t in of_kind(docs, "KafkaTopic").values()}
    prod = render(KNATIVE / "overlays" / "prod")
    sources = of_kind(prod, "KafkaSource")
    groups = {s["spec"]["consumerGroup"] for s in sources.values()}
    for name, user in users.items():
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        for acl in user["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            assert resource["type"] in {"topic", "group"}, f"{name}: {resource}"
            assert resource.get("patternType", "literal") == "literal" and resource["name"] != "*"
            assert resource["name"] in (topics if resource["type"] == "topic" else groups), f"{name}: {resource}"
            assert "All" not in acl["operations"]
            if resource["type"] == "topic" and name != "kinfer-minio" and name != "kinfer-sink":
                assert "Write" not in acl["operations"], f"{name}: a consumer must not write"
    sink_topic = of_kind(prod, "KafkaSink")["batch-chunks"]["spec"]["topic"]
    assert [a["resource"]["name"] for a in users["kinfer-sink"]["spec"]["authorization"]["acls"]] == [sink_topic]


def test_the_sink_and_sources_authenticate_with_terraform_secrets() -> None:
    prod = render(KNATIVE / "overlays" / "prod")
    sink = of_kind(prod, "KafkaSink")["batch-chunks"]
    names = {sink["spec"]["auth"]["secret"]["ref"]["name"]}
    for source in of_kind(prod, "KafkaSource").values():
        sasl = source["spec"]["net"]["sasl"]
        assert sasl["enable"] is True
        refs = {k: sasl[k]["secretKeyRef"] for k in ("user", "password", "type")}
        assert {r["key"] for r in refs.values()} == {"user", "password", "sasl.mechanism"}
        assert len({r["name"] for r in refs.values()}) == 1
        names.add(refs["user"]["name"])
    text = (PLATFORM / "main.tf").read_text()
    for key in ('protocol         = "SASL_PLAINTEXT"', '"sasl.mechanism" = "SCRAM-SHA-512"', "user", "password"):
        assert key in text
    assert names == {"kinfer-kafka-sink", "kinfer-kafka-worker-source", "kinfer-kafka-intake-source"}
    assert '"kinfer-kafka-${client}"' in text and 'for client in ["sink", "worker-source", "intake-source"]' in text


def test_minio_notifications_authenticate() -> None:
    text = (TF / "modules" / "data" / "main.tf").read_text()
    assert 'MINIO_NOTIFY_KAFKA_SASL_KINFER           = "on"' in text
    assert 'MINIO_NOTIFY_KAFKA_SASL_MECHANISM_KINFER = "sha512"' in text
    assert "environment.MINIO_NOTIFY_KAFKA_SASL_PASSWORD_KINFER" in text  # set_sensitive, not in values
    kafka = parse(TF / "modules" / "kafka")
    assert named(kafka["output"])["credentials"]["sensitive"] is True
