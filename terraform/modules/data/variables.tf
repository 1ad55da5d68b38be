variable "namespace" {
  description = "Namespace of the in-cluster data services."
  type        = string
}

variable "database_url" {
  description = "Existing PostgreSQL URL; empty installs PostgreSQL."
  type        = string
  sensitive   = true
}

variable "redis_url" {
  description = "Existing Redis URL; empty installs Redis."
  type        = string
  sensitive   = true
}

variable "s3_endpoint_url" {
  description = "Existing S3 endpoint (scheme://host:port); empty installs MinIO."
  type        = string
}

variable "s3_region" {
  description = "S3 region."
  type        = string
}

variable "s3_access_key_id" {
  description = "Access key of the existing S3 endpoint."
  type        = string
  sensitive   = true
}

variable "s3_secret_access_key" {
  description = "Secret key of the existing S3 endpoint."
  type        = string
  sensitive   = true
}

variable "kafka_brokers" {
  description = "Kafka bootstrap servers that MinIO sends input-bucket notifications to."
  type        = string
}

variable "batch_request_topic" {
  description = "Kafka topic of batch requests (<install_name>.batch.requests) that MinIO sends input-bucket notifications to."
  type        = string
}

variable "input_bucket" {
  description = "Bucket of batch inputs (S3_INPUT_BUCKET); uploads of .jsonl files there start batch jobs."
  type        = string
  default     = "kinfer-batch-inputs"
}

variable "capture_bucket" {
  description = "Bucket of captured requests (CAPTURE_BUCKET): written by the data path, read by replays."
  type        = string
  default     = "kinfer-capture"
}

variable "results_bucket" {
  description = "Bucket of batch results (S3_RESULTS_BUCKET)."
  type        = string
  default     = "kinfer-batch-results"
}

variable "model_bucket" {
  description = "Bucket of Triton's model repository."
  type        = string
  default     = "triton-models"
}

variable "cnpg_chart_version" {
  description = "CloudNativePG operator chart version (https://cloudnative-pg.github.io/charts); it pins the operator image."
  type        = string
  default     = "0.29.0"
}

variable "postgres_image" {
  description = "PostgreSQL image of the CloudNativePG Cluster."
  type        = string
  default     = "ghcr.io/cloudnative-pg/postgresql:17.5"
}

variable "postgres_instances" {
  description = "PostgreSQL instances of the Cluster (1 primary, the rest streaming replicas)."
  type        = number
  default     = 1
}

variable "postgres_storage_size" {
  description = "Persistent volume size per PostgreSQL instance."
  type        = string
  default     = "20Gi"
}

variable "valkey_chart_version" {
  description = "Valkey chart version (https://valkey.io/valkey-helm/)."
  type        = string
  default     = "0.9.2"
}

variable "valkey_image" {
  description = "Valkey image (registry/repository:tag)."
  type        = string
  default     = "docker.io/valkey/valkey:9.0.1"
}

variable "minio_chart_version" {
  description = "MinIO chart version."
  type        = string
  default     = "5.4.0"
}

variable "minio_image" {
  description = "S3 server image the MinIO chart runs (repository:tag[@sha256:digest]): Silo (docker.io/pgsty/silo), the maintained community fork of MinIO, at a release with the CVE-2025-62506 fix (MinIO's own images are withdrawn and the community edition unmaintained)."
  type        = string
  default     = "docker.io/pgsty/silo:RELEASE.2026-09-16T00-00-00Z@sha256:635197cb9f36d01bee221d34d1c7d7960f6a95c48b0b6c01d99cd13bdae51a46"
}

variable "minio_mc_image" {
  description = "MinIO client image the chart's setup jobs run (buckets, users, policies): Silo's mc (docker.io/pgsty/mc), repository:tag[@sha256:digest]."
  type        = string
  default     = "docker.io/pgsty/mc:RELEASE.2026-09-16T00-00-00Z@sha256:cfc83108c3abb371f8fb84d99c1fdc88f8c237e022409b0081fb7c0a3be634dd"
}

variable "kafka_credentials" {
  description = "SCRAM-SHA-512 user and password MinIO's bucket notifications use (the KafkaUser kinfer-minio)."
  type        = object({ user = string, password = string })
  sensitive   = true
}

variable "kafka_ca_certificate" {
  description = "PEM certificate of the CA MinIO checks the Kafka brokers against (its bucket notifications connect with SASL_SSL)."
  type        = string
}

variable "functions_namespace" {
  description = "Namespace of the Kinfer functions: the only one the data ports admit (NetworkPolicy allow-functions)."
  type        = string
  default     = "kinfer"
}

variable "kafka_namespace" {
  description = "Namespace of the Kafka cluster MinIO sends notifications to (NetworkPolicy allow-egress)."
  type        = string
  default     = "kafka"
}

variable "s3_workload_identity" {
  description = "The functions reach S3 with a cloud workload identity (IRSA, GKE Workload Identity): no static S3 keys."
  type        = bool
  default     = false
}
