"""Kafka: no unauthenticated and no unencrypted listener; one SCRAM-SHA-512 KafkaUser per client with
ACLs on its own topic and group; every client (KafkaSink, KafkaSources, MinIO's notifications) connects
with SASL_SSL and checks the brokers against the cluster CA.

The rules, from the upstream sources at the pinned tags:
- Strimzi 1.2.0 (tests/fixtures/releases/strimzi-1.2.0/kafka-crd.yaml, from
  packaging/install/cluster-operator/040-Crd-kafka.yaml): a listener's ``tls`` "Enables TLS encryption on
  the listener"; ``clusterCa.generateCertificateAuthority: false`` makes the operator use the CA of the
  Secrets ``<cluster>-cluster-ca-cert`` (``ca.crt``) and ``<cluster>-cluster-ca`` (``ca.key``), labelled
  ``strimzi.io/kind=Kafka`` and ``strimzi.io/cluster=<cluster>`` and annotated with their generation
  (documentation/modules/security/proc-installing-your-own-ca-certificates.adoc at tag 1.2.0).
- eventing-kafka-broker knative-v1.22.3, control-plane/pkg/security/secret.go: a KafkaSink's auth Secret
  names its ``protocol``; SASL_SSL applies both the SASL keys (``sasl.mechanism``, ``user``,
  ``password``) and TLS, whose trusted roots are ``ca.crt`` (without it the system roots, which do not
  hold a private cluster CA).
- the same tag, control-plane/pkg/security/secrets_provider_net_spec.go: a KafkaSource's protocol is
  SASL_SSL only when ``net.sasl.enable`` and ``net.tls.enable`` are both true, and ``net.tls.caCert``
  is read into ``ca.crt`` (from a Secret of the source's namespace).
- MinIO RELEASE.2025-10-15T17-29-55Z (and Silo), internal/event/target/kafka.go: ``MINIO_NOTIFY_KAFKA_TLS``
  turns TLS on for a Kafka target, whose roots are the server's (internal/config/notify/parse.go), i.e.
  the system's and ``certs/CAs``, where the MinIO chart mounts ``trustedCertsSecret``.
"""

from __future__ import annotations

import re

from tests.deploy.support import KNATIVE, PLATFORM, TF, all_typed, named, of_kind, parse, render, unquote

KAFKA_MODULE = TF / "modules" / "kafka"

CLIENTS = {"kinfer-sink", "kinfer-worker-source", "kinfer-intake-source", "kinfer-minio"}


def test_every_listener_authenticates_and_acls_are_enforced() -> None:
    kafka = of_kind(render(KNATIVE / "strimzi"), "Kafka")["kinfer"]["spec"]["kafka"]
    for listener in kafka["listeners"]:
        assert listener.get("authentication", {}).get("type") in {"scram-sha-512", "tls"}, listener["name"]
        assert listener.get("networkPolicyPeers"), f"{listener['name']}: Strimzi's policy would admit every pod"
    assert kafka["authorization"]["type"] == "simple"


def test_no_listener_is_plain() -> None:
    """Every listener encrypts (tls: true): SCRAM alone still sends every event in clear on the wire."""
    kafka = of_kind(render(KNATIVE / "strimzi"), "Kafka")["kinfer"]["spec"]
    plain = [listener["name"] for listener in kafka["kafka"]["listeners"] if listener.get("tls") is not True]
    assert not plain, f"listeners without TLS (SASL_PLAINTEXT or PLAINTEXT): {plain}"
    assert kafka["clusterCa"]["generateCertificateAuthority"] is False, "the cluster CA must be terraform's"


def test_terraform_installs_the_cluster_ca_strimzi_expects() -> None:
    resources = all_typed(parse(KAFKA_MODULE)["resource"])
    secrets = {
        unquote(body["metadata"][0]["name"]): body
        for (rtype, _), body in resources.items()
        if rtype == "kubernetes_secret" and unquote(body["metadata"][0]["name"]).startswith("kinfer-cluster-ca")
    }
    assert set(secrets) == {"kinfer-cluster-ca-cert", "kinfer-cluster-ca"}, (
        "Strimzi's names: <cluster>-cluster-ca[-cert]"
    )
    assert set(secrets["kinfer-cluster-ca-cert"]["data"]) == {'"ca.crt"'}
    assert set(secrets["kinfer-cluster-ca"]["data"]) == {'"ca.key"'}
    labels = parse(KAFKA_MODULE)["locals"]
    ca_labels = next(block["ca_labels"] for block in labels if "ca_labels" in block)
    assert {unquote(k): unquote(v) for k, v in ca_labels.items()}.items() >= {
        ("strimzi.io/kind", "Kafka"),
        ("strimzi.io/cluster", "kinfer"),
    }
    assert '"strimzi.io/ca-cert-generation"' in secrets["kinfer-cluster-ca-cert"]["metadata"][0]["annotations"]
    assert '"strimzi.io/ca-key-generation"' in secrets["kinfer-cluster-ca"]["metadata"][0]["annotations"]
    cert = resources[("tls_self_signed_cert", "cluster_ca")]
    assert cert["is_ca_certificate"] is True and "cert_signing" in [unquote(u) for u in cert["allowed_uses"]]
    applied = str(resources[("kustomization_resource", "strimzi")]["depends_on"])
    assert "kubernetes_secret.cluster_ca_cert" in applied and "kubernetes_secret.cluster_ca_key" in applied, (
        "the CA Secrets must exist before the Kafka, or Strimzi reconciles without them"
    )
    output = named(parse(KAFKA_MODULE)["output"])["ca_certificate"]
    assert "tls_self_signed_cert.cluster_ca[0].cert_pem" in str(output["value"])


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
        net = source["spec"]["net"]
        assert net["sasl"]["enable"] is True and net["tls"]["enable"] is True, "SASL_SSL needs sasl and tls enabled"
        refs = {k: net["sasl"][k]["secretKeyRef"] for k in ("user", "password", "type")}
        refs["caCert"] = net["tls"]["caCert"]["secretKeyRef"]
        assert {r["key"] for r in refs.values()} == {"user", "password", "sasl.mechanism", "ca.crt"}
        assert len({r["name"] for r in refs.values()}) == 1
        assert not net["tls"].get("cert") and not net["tls"].get("key"), "SCRAM authenticates, not a client cert"
        names.add(refs["user"]["name"])
    assert names == {"kinfer-kafka-sink", "kinfer-kafka-worker-source", "kinfer-kafka-intake-source"}
    secret = _kafka_secret_keys()
    assert secret == {
        "protocol": '"SASL_SSL"',
        "sasl.mechanism": '"SCRAM-SHA-512"',
        "user": "var.kafka_credentials[client].user",
        "password": "var.kafka_credentials[client].password",
        "ca.crt": "var.kafka_ca_certificate",
    }
    text = (PLATFORM / "main.tf").read_text()
    assert '"kinfer-kafka-${client}"' in text and 'for client in ["sink", "worker-source", "intake-source"]' in text


def _kafka_secret_keys() -> dict[str, str]:
    """The keys of the platform's kafka_secrets (one object per client) and their expressions."""
    text = (PLATFORM / "main.tf").read_text()
    body = re.search(r"kafka_secrets = \{ for client in .*? => \{\n(.*?)\n\s*\} \}", text, re.S)
    assert body, "platform: no kafka_secrets local"
    keys = {}
    for line in body.group(1).splitlines():
        key, value = (part.strip() for part in line.split("=", 1))
        keys[key.strip('"')] = value
    return keys


def test_every_client_gets_the_cluster_ca() -> None:
    """The CA reaches each client: the platform's Secrets, MinIO's trusted CAs; an existing Kafka needs one."""
    root = (TF / "main.tf").read_text()
    assert len(re.findall(r"kafka_ca_certificate\s*= module.kafka.ca_certificate", root)) == 2, "platform and data"
    assert re.search(r"ca_certificate\s*= var.kafka_ca_certificate", root)
    gate = all_typed(parse(KAFKA_MODULE)["resource"])[("terraform_data", "existing_kafka_credentials")]
    conditions = " ".join(str(p["condition"]) for p in gate["lifecycle"][0]["precondition"])
    assert "var.ca_certificate" in conditions, "an existing Kafka must come with the CA of its brokers"


def test_minio_notifications_authenticate_over_tls() -> None:
    text = (TF / "modules" / "data" / "main.tf").read_text()
    env = dict(re.findall(r"(MINIO_NOTIFY_KAFKA_\w+_KINFER)\s*=\s*(\S+)", text))
    assert env["MINIO_NOTIFY_KAFKA_SASL_KINFER"] == '"on"'
    assert env["MINIO_NOTIFY_KAFKA_SASL_MECHANISM_KINFER"] == '"sha512"'
    assert env["MINIO_NOTIFY_KAFKA_TLS_KINFER"] == '"on"', "MinIO's notifications must use TLS"
    assert env.get("MINIO_NOTIFY_KAFKA_TLS_SKIP_VERIFY_KINFER", '"off"') == '"off"'
    assert "environment.MINIO_NOTIFY_KAFKA_SASL_PASSWORD_KINFER" in text  # set_sensitive, not in values
    assert "trustedCertsSecret = kubernetes_secret.kafka_ca[0].metadata[0].name" in text
    ca = all_typed(parse(TF / "modules" / "data")["resource"])[("kubernetes_secret", "kafka_ca")]
    assert ca["data"] == {'"kafka-ca.crt"': "${var.kafka_ca_certificate}"}
    kafka = parse(KAFKA_MODULE)
    assert named(kafka["output"])["credentials"]["sensitive"] is True
