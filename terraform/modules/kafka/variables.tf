variable "bootstrap_servers" {
  description = "Existing Kafka bootstrap servers (comma-separated); empty installs Strimzi and a KRaft Kafka cluster."
  type        = string
}

variable "chunk_partitions" {
  description = "Partitions of the chunk topic (topics.chunks)."
  type        = number
}

variable "topics" {
  description = "Kafka names of this install's topics (the root module's install_name): chunks (KafkaTopic kinfer-batch-chunks) and requests (KafkaTopic kinfer-batch-requests)."
  type        = object({ chunks = string, requests = string })
}

variable "namespace" {
  description = "Namespace of Strimzi and the Kafka cluster."
  type        = string
  default     = "kafka"
}

variable "strimzi_version" {
  description = "Strimzi operator chart version (oci://quay.io/strimzi-helm/strimzi-kafka-operator); 1.x serves the kafka.strimzi.io/v1 API only (docs/operations.md, upgrading from 0.4x)."
  type        = string
  default     = "1.2.0"
}

variable "replicas" {
  description = "Kafka broker/controller nodes (also the topics' replication factor, at most 3)."
  type        = number
  default     = 3
}

variable "storage_size" {
  description = "Persistent volume size per Kafka node."
  type        = string
  default     = "50Gi"
}
