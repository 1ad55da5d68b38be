variable "prerequisites" {
  description = "Outputs of the modules the platform runs on (Knative, Kafka, data services); its resources are applied after them."
  type        = map(string)
}

variable "image" {
  description = "Kinfer image reference (name[:tag][@sha256:digest])."
  type        = string
}

variable "agent_image" {
  description = "Image of the model agent in each Triton pod (empty: <image's repository>-agent:<agent version>, agent.tf); only a change of it rolls the Triton Service."
  type        = string
}

variable "kafka_names" {
  description = "Kafka names of this install: chunk_topic, request_topic, worker_group, intake_group (the root module's install_name)."
  type        = object({ chunk_topic = string, request_topic = string, worker_group = string, intake_group = string })
}

variable "namespace" {
  description = "Namespace of the functions, Triton and eventing."
  type        = string
}

variable "domain" {
  description = "Cluster domain of the public Knative routes."
  type        = string
}

variable "overlay" {
  description = "knative/overlays/<overlay> to apply."
  type        = string
}

variable "gpu_count" {
  description = "GPUs per Triton replica."
  type        = number
}

variable "gpu_node_selector" {
  description = "Node labels Triton's pods must match (e.g. a GPU node pool); empty: any node with a free GPU."
  type        = map(string)
}

variable "triton_keep_warm" {
  description = "Add the knative/components/triton-warm component (min-scale 1)."
  type        = bool
}

variable "llm_backend" {
  description = "\"vllm\": add the knative/components/triton-llm component (the Knative Service triton-llm) and allow it as a backend_url; \"none\": neither."
  type        = string
}

variable "hf_token" {
  description = "Hugging Face token of the triton-llm Service (Secret kinfer-hf-token, created only when set)."
  type        = string
  sensitive   = true
}

variable "kafka_brokers" {
  description = "Comma-separated Kafka bootstrap servers."
  type        = string
}

variable "database_url" {
  description = "DATABASE_URL (Secret kinfer-database)."
  type        = string
  sensitive   = true
}

variable "redis_url" {
  description = "REDIS_URL (Secret kinfer-redis)."
  type        = string
  sensitive   = true
}

variable "s3_endpoint_url" {
  description = "S3_ENDPOINT_URL (scheme://host:port)."
  type        = string
}

variable "s3_region" {
  description = "S3_REGION."
  type        = string
}

variable "s3_workloads" {
  description = "Workloads that get S3 credentials (Secret kinfer-s3-<workload>)."
  type        = list(string)
}

variable "s3_credentials" {
  description = "S3 key pair per workload of s3_workloads."
  type        = map(object({ access_key_id = string, secret_access_key = string }))
  sensitive   = true
}

variable "model_bucket" {
  description = "Bucket of Triton's model repository (kinfer deploy upload-models --bucket)."
  type        = string
  default     = "triton-models"
}

variable "model_prefix" {
  description = "Key prefix of the model repository in model_bucket (--prefix)."
  type        = string
  default     = "models"
}

variable "service_account_issuer" {
  description = "The cluster's service-account token issuer: EVENT_OIDC_ISSUER of the event functions."
  type        = string
}

variable "data_namespace" {
  description = "Namespace of the in-cluster data services (MinIO's Service for the S3 route)."
  type        = string
}

variable "minio_installed" {
  description = "Whether MinIO runs in the cluster: then its S3 API is routed on https://s3.<domain>."
  type        = bool
}

variable "s3_public_endpoint_url" {
  description = "S3_PUBLIC_ENDPOINT_URL: the S3 endpoint clients reach, for presigned result URLs (empty: https://s3.<domain> with in-cluster MinIO, else S3_ENDPOINT_URL)."
  type        = string
}

variable "tls_certificate" {
  description = "PEM certificate (chain) of the Gateway for api.<domain> and s3.<domain>; empty: self-signed."
  type        = string
}

variable "tls_private_key" {
  description = "PEM private key of tls_certificate."
  type        = string
  sensitive   = true
}

variable "kafka_credentials" {
  description = "SCRAM-SHA-512 user and password per Kafka client (sink, worker-source, intake-source, minio)."
  type        = map(object({ user = string, password = string }))
  sensitive   = true
}

variable "kafka_ca_certificate" {
  description = "PEM certificate of the CA the Kafka clients check the brokers against (ca.crt of their Secrets)."
  type        = string
}

variable "input_bucket" {
  description = "Bucket of batch inputs: presigned PUT through the S3 route."
  type        = string
  default     = "kinfer-batch-inputs"
}

variable "results_bucket" {
  description = "Bucket of batch results: presigned GET through the S3 route."
  type        = string
  default     = "kinfer-batch-results"
}

variable "s3_workload_identity_annotations" {
  description = "Annotations binding the ServiceAccount kinfer-function to a cloud identity for S3 (IRSA, GKE Workload Identity); set: no static S3 keys."
  type        = map(string)
  default     = {}
}

variable "external_endpoints" {
  description = "Whether any data endpoint or Kafka is outside the cluster (then NetworkPolicy kinfer-external-egress)."
  type        = bool
  default     = false
}

variable "external_egress_cidrs" {
  description = "Destinations of the external endpoints."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "external_egress_ports" {
  description = "TCP ports of the external endpoints."
  type        = list(number)
  default     = [443, 5432, 6379, 9000, 9092, 9093]
}
