variable "bootstrap_servers" {
  description = "Existing Kafka bootstrap servers (comma-separated); empty installs Strimzi and a KRaft Kafka cluster."
  type        = string
}

variable "chunk_partitions" {
  description = "Partitions of kinfer.batch.chunks."
  type        = number
}

variable "namespace" {
  description = "Namespace of Strimzi and the Kafka cluster."
  type        = string
  default     = "kafka"
}

variable "strimzi_version" {
  description = "Strimzi operator chart version."
  type        = string
  default     = "0.45.0"
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
