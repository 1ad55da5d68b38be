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

variable "buckets" {
  description = "Buckets Kinfer uses: batch inputs, batch results, Triton's model repository."
  type        = list(string)
  default     = ["kinfer-batch-inputs", "kinfer-batch-results", "triton-models"]
}

variable "postgresql_chart_version" {
  description = "Bitnami PostgreSQL chart version."
  type        = string
  default     = "16.4.5"
}

variable "redis_chart_version" {
  description = "Bitnami Redis chart version."
  type        = string
  default     = "20.6.3"
}

variable "minio_chart_version" {
  description = "MinIO chart version."
  type        = string
  default     = "5.4.0"
}
