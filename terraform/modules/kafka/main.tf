# Kafka for Knative Eventing: either the servers given, or Strimzi's operator
# with knative/strimzi rendered into var.namespace: one KRaft cluster "kinfer"
# (combined controller+broker node pool) and the two topics Kinfer uses. The
# topics' partitions are set here only (the KafkaSink does not own its topic);
# with existing servers, create both topics there (docs/operations.md).

locals {
  install     = var.bootstrap_servers == ""
  replication = min(var.replicas, 3)
  strimzi_dir = abspath("${path.module}/../../../knative/strimzi")

  # The SCRAM-SHA-512 user of each client (knative/strimzi/users.yaml): the Strimzi
  # KafkaUser's name, or the user given for an existing Kafka (every client then shares it).
  users = {
    sink          = "kinfer-sink"
    worker-source = "kinfer-worker-source"
    intake-source = "kinfer-intake-source"
    minio         = "kinfer-minio"
  }
}

# With an existing Kafka, its SCRAM-SHA-512 user and the CA of its brokers' certificates are
# required: Kinfer's clients never connect without authentication, nor without TLS.
resource "terraform_data" "existing_kafka_credentials" {
  count = local.install ? 0 : 1
  lifecycle {
    precondition {
      condition     = var.sasl_username != "" && var.sasl_password != ""
      error_message = "kafka_sasl_username and kafka_sasl_password are required with kafka_bootstrap_servers (SCRAM-SHA-512)."
    }
    precondition {
      condition     = can(regex("-----BEGIN CERTIFICATE-----", var.ca_certificate))
      error_message = "kafka_ca_certificate (PEM) is required with kafka_bootstrap_servers: the clients connect with SASL_SSL and check the brokers against it."
    }
  }
}

# The cluster CA of the Strimzi Kafka (Strimzi 1.2.0 documentation,
# security/proc-installing-your-own-ca-certificates.adoc: Secrets <cluster>-cluster-ca-cert,
# key ca.crt, and <cluster>-cluster-ca, key ca.key, labelled with the Kafka, annotated with
# their generation, and Kafka spec.clusterCa.generateCertificateAuthority false). Generated
# here rather than by Strimzi so that the clients' Secrets (platform, data) hold its
# certificate from the first apply on, with no read-back of an operator's Secret. Strimzi
# signs and renews the brokers' certificates with this key. The certificate is re-issued
# (same key) by the apply that runs in its last year; its generation is its issue date, so
# Strimzi sees a higher one and rolls the brokers while the clients get the new ca.crt.
resource "tls_private_key" "cluster_ca" {
  count     = local.install ? 1 : 0
  algorithm = "RSA"
  rsa_bits  = 4096
}

resource "tls_self_signed_cert" "cluster_ca" {
  count                 = local.install ? 1 : 0
  private_key_pem       = tls_private_key.cluster_ca[0].private_key_pem
  is_ca_certificate     = true
  validity_period_hours = 24 * 365 * 10
  early_renewal_hours   = 24 * 365
  allowed_uses          = ["cert_signing", "crl_signing", "digital_signature", "key_encipherment"]
  subject {
    common_name  = "cluster-ca kinfer"
    organization = "Kinfer (Kafka cluster CA)"
  }
}

locals {
  ca_labels = {
    "strimzi.io/kind"           = "Kafka"
    "strimzi.io/cluster"        = "kinfer"
    "app.kubernetes.io/part-of" = "kinfer"
  }
}

resource "kubernetes_secret" "cluster_ca_cert" {
  count = local.install ? 1 : 0
  metadata {
    name        = "kinfer-cluster-ca-cert"
    namespace   = var.namespace
    labels      = local.ca_labels
    annotations = { "strimzi.io/ca-cert-generation" = formatdate("YYYYMMDD", tls_self_signed_cert.cluster_ca[0].validity_start_time) }
  }
  type       = "Opaque"
  data       = { "ca.crt" = tls_self_signed_cert.cluster_ca[0].cert_pem }
  depends_on = [helm_release.strimzi]
}

resource "kubernetes_secret" "cluster_ca_key" {
  count = local.install ? 1 : 0
  metadata {
    name        = "kinfer-cluster-ca"
    namespace   = var.namespace
    labels      = local.ca_labels
    annotations = { "strimzi.io/ca-key-generation" = "0" }
  }
  type       = "Opaque"
  data       = { "ca.key" = tls_private_key.cluster_ca[0].private_key_pem_pkcs8 }
  depends_on = [helm_release.strimzi]
}

# The KafkaUsers' passwords (they read them from these Secrets, key password): generated
# here so that the platform can hand each one to its client in the functions namespace.
resource "random_password" "user" {
  for_each = local.install ? local.users : {}
  length   = 40
  special  = false
}

resource "kubernetes_secret" "user_password" {
  for_each = local.install ? local.users : {}
  metadata {
    name      = "${each.value}-password"
    namespace = var.namespace
    labels    = { "app.kubernetes.io/part-of" = "kinfer" }
  }
  type       = "Opaque"
  data       = { password = random_password.user[each.key].result }
  depends_on = [helm_release.strimzi]
}

resource "helm_release" "strimzi" {
  count            = local.install ? 1 : 0
  name             = "strimzi"
  repository       = "oci://quay.io/strimzi-helm"
  chart            = "strimzi-kafka-operator"
  version          = var.strimzi_version
  namespace        = var.namespace
  create_namespace = true
  atomic           = true
  wait             = true
  timeout          = 600
}

data "kustomization_overlay" "strimzi" {
  count     = local.install ? 1 : 0
  resources = [local.strimzi_dir]
  namespace = var.namespace

  patches {
    target {
      kind = "KafkaNodePool"
      name = "combined"
    }
    patch = jsonencode([
      { op = "replace", path = "/spec/replicas", value = var.replicas },
      { op = "replace", path = "/spec/storage/volumes/0/size", value = var.storage_size },
    ])
  }

  patches {
    target {
      kind = "Kafka"
      name = "kinfer"
    }
    patch = jsonencode([for key, value in {
      "default.replication.factor"               = local.replication
      "min.insync.replicas"                      = max(local.replication - 1, 1)
      "offsets.topic.replication.factor"         = local.replication
      "transaction.state.log.replication.factor" = local.replication
      "transaction.state.log.min.isr"            = max(local.replication - 1, 1)
    } : { op = "replace", path = "/spec/kafka/config/${key}", value = value }])
  }

  patches {
    target {
      kind = "KafkaTopic"
    }
    patch = jsonencode([{ op = "replace", path = "/spec/replicas", value = local.replication }])
  }

  patches {
    target {
      kind = "KafkaTopic"
      name = "kinfer-batch-chunks"
    }
    patch = jsonencode([
      { op = "replace", path = "/spec/partitions", value = var.chunk_partitions },
      { op = "replace", path = "/spec/topicName", value = var.topics.chunks },
    ])
  }

  patches {
    target {
      kind = "KafkaTopic"
      name = "kinfer-batch-requests"
    }
    patch = jsonencode([{ op = "replace", path = "/spec/topicName", value = var.topics.requests }])
  }

  # The ACLs name this install's topics and consumer groups, and the listener's clients
  # include the data namespace (MinIO's notifications). YAML heredocs:
  # tests/deploy/test_kafka_auth.py and test_network.py render them.
  patches {
    target {
      kind = "KafkaUser"
      name = "kinfer-sink"
    }
    patch = <<-YAML
      - op: test
        path: /spec/authorization/acls/0/resource/type
        value: topic
      - op: replace
        path: /spec/authorization/acls/0/resource/name
        value: "${var.topics.chunks}"
    YAML
  }

  patches {
    target {
      kind = "KafkaUser"
      name = "kinfer-worker-source"
    }
    patch = <<-YAML
      - op: replace
        path: /spec/authorization/acls/0/resource/name
        value: "${var.topics.chunks}"
      - op: test
        path: /spec/authorization/acls/1/resource/type
        value: group
      - op: replace
        path: /spec/authorization/acls/1/resource/name
        value: "${var.groups.worker}"
    YAML
  }

  patches {
    target {
      kind = "KafkaUser"
      name = "kinfer-intake-source"
    }
    patch = <<-YAML
      - op: replace
        path: /spec/authorization/acls/0/resource/name
        value: "${var.topics.requests}"
      - op: test
        path: /spec/authorization/acls/1/resource/type
        value: group
      - op: replace
        path: /spec/authorization/acls/1/resource/name
        value: "${var.groups.intake}"
    YAML
  }

  patches {
    target {
      kind = "KafkaUser"
      name = "kinfer-minio"
    }
    patch = <<-YAML
      - op: replace
        path: /spec/authorization/acls/0/resource/name
        value: "${var.topics.requests}"
    YAML
  }

  patches {
    target {
      kind = "Kafka"
      name = "kinfer"
    }
    patch = <<-YAML
      - op: test
        path: /spec/kafka/listeners/0/networkPolicyPeers/1/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: kinfer-data
      - op: replace
        path: /spec/kafka/listeners/0/networkPolicyPeers/1/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: "${var.data_namespace}"
    YAML
  }

  patches {
    target {
      kind = "NetworkPolicy"
      name = "allow-kafka-clients"
    }
    patch = <<-YAML
      - op: test
        path: /spec/ingress/0/from/1/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: kinfer-data
      - op: replace
        path: /spec/ingress/0/from/1/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: "${var.data_namespace}"
    YAML
  }
}

resource "kustomization_resource" "strimzi" {
  for_each = local.install ? data.kustomization_overlay.strimzi[0].ids : toset([])
  manifest = data.kustomization_overlay.strimzi[0].manifests[each.value]
  timeouts {
    create = "10m"
    update = "10m"
  }
  # The cluster CA first: Strimzi must find it before it reconciles the Kafka, or it would
  # generate one of its own.
  depends_on = [helm_release.strimzi, kubernetes_secret.user_password, kubernetes_secret.cluster_ca_cert, kubernetes_secret.cluster_ca_key]
}
