# Kafka for Knative Eventing: either the servers given, or Strimzi's operator
# with one KRaft cluster "kinfer" (combined controller+broker node pool) and
# the two topics Kinfer uses.

locals {
  install     = var.bootstrap_servers == ""
  replication = min(var.replicas, 3)
  topics = {
    "kinfer.batch.chunks"   = var.chunk_partitions
    "kinfer.batch.requests" = 3
  }
}

resource "helm_release" "strimzi" {
  count            = local.install ? 1 : 0
  name             = "strimzi"
  repository       = "https://strimzi.io/charts/"
  chart            = "strimzi-kafka-operator"
  version          = var.strimzi_version
  namespace        = var.namespace
  create_namespace = true
  atomic           = true
  timeout          = 600
}

resource "kustomization_resource" "node_pool" {
  count = local.install ? 1 : 0
  manifest = jsonencode({
    apiVersion = "kafka.strimzi.io/v1beta2"
    kind       = "KafkaNodePool"
    metadata = {
      name      = "combined"
      namespace = var.namespace
      labels    = { "strimzi.io/cluster" = "kinfer" }
    }
    spec = {
      replicas = var.replicas
      roles    = ["controller", "broker"]
      storage = {
        type = "jbod"
        volumes = [{
          id          = 0, type = "persistent-claim", size = var.storage_size,
          deleteClaim = false, kraftMetadata = "shared"
        }]
      }
    }
  })
  depends_on = [helm_release.strimzi]
}

resource "kustomization_resource" "cluster" {
  count = local.install ? 1 : 0
  manifest = jsonencode({
    apiVersion = "kafka.strimzi.io/v1beta2"
    kind       = "Kafka"
    metadata = {
      name      = "kinfer"
      namespace = var.namespace
      annotations = {
        "strimzi.io/node-pools" = "enabled"
        "strimzi.io/kraft"      = "enabled"
      }
    }
    spec = {
      kafka = {
        listeners = [{ name = "plain", port = 9092, type = "internal", tls = false }]
        config = {
          "default.replication.factor"       = local.replication
          "min.insync.replicas"              = max(local.replication - 1, 1)
          "offsets.topic.replication.factor" = local.replication
          "auto.create.topics.enable"        = false
        }
      }
      entityOperator = { topicOperator = {}, userOperator = {} }
    }
  })
  depends_on = [kustomization_resource.node_pool]
}

resource "kustomization_resource" "topic" {
  for_each = local.install ? local.topics : {}
  manifest = jsonencode({
    apiVersion = "kafka.strimzi.io/v1beta2"
    kind       = "KafkaTopic"
    metadata = {
      name      = replace(each.key, ".", "-")
      namespace = var.namespace
      labels    = { "strimzi.io/cluster" = "kinfer" }
    }
    spec = {
      topicName  = each.key
      partitions = each.value
      replicas   = local.replication
      config     = { "retention.ms" = 7 * 24 * 3600 * 1000 }
    }
  })
  depends_on = [kustomization_resource.cluster]
}
