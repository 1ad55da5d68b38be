# Kafka for Knative Eventing: either the servers given, or Strimzi's operator
# with knative/strimzi rendered into var.namespace: one KRaft cluster "kinfer"
# (combined controller+broker node pool) and the two topics Kinfer uses. The
# topics' partitions are set here only (the KafkaSink does not own its topic);
# with existing servers, create both topics there (docs/operations.md).

locals {
  install     = var.bootstrap_servers == ""
  replication = min(var.replicas, 3)
  strimzi_dir = abspath("${path.module}/../../../knative/strimzi")
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
}

resource "kustomization_resource" "strimzi" {
  for_each = local.install ? data.kustomization_overlay.strimzi[0].ids : toset([])
  manifest = data.kustomization_overlay.strimzi[0].manifests[each.value]
  timeouts {
    create = "10m"
    update = "10m"
  }
  depends_on = [helm_release.strimzi]
}
