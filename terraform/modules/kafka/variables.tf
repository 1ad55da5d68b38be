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

variable "groups" {
  description = "Consumer groups of this install's KafkaSources (the root module's install_name): worker, intake."
  type        = object({ worker = string, intake = string })
}

variable "data_namespace" {
  description = "Namespace of the in-cluster data services: MinIO there sends bucket notifications to the listener (NetworkPolicy peers)."
  type        = string
  default     = "kinfer-data"
}

variable "sasl_username" {
  description = "SCRAM-SHA-512 user of the existing Kafka (with bootstrap_servers); ignored when Strimzi is installed (one KafkaUser per client)."
  type        = string
  default     = ""
}

variable "sasl_password" {
  description = "Password of sasl_username."
  type        = string
  default     = ""
  sensitive   = true
}

variable "ca_certificate" {
  description = "PEM certificate of the CA that signed the existing Kafka's broker certificates (with bootstrap_servers; required with it); ignored when Strimzi is installed (the cluster CA generated here)."
  type        = string
  default     = ""
}
