variable "image" {
  description = "The Kinfer container image, e.g. ghcr.io/acme/kinfer:0.1.0 or ...@sha256:<digest>."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._/:-]*[A-Za-z0-9_](@sha256:[0-9a-f]{64})?$", var.image))
    error_message = "image must be a reference such as registry/name:tag or registry/name@sha256:<digest>."
  }
}

variable "agent_image" {
  description = "Image of the model agent beside each Triton replica (`kinfer agent`). Empty: <image's repository>-agent:<agent version> (e.g. registry.example.com/kinfer-agent:1.0 for image registry.example.com/kinfer:0.2.0; the version is knative/agent-version.json and moves only when the agent's code does), so a deploy of a new image does not roll the Triton Service, whose new revision starts a GPU; scripts/push-images pushes that image. Set it to run the agent from another image (docs/operations.md)."
  type        = string
  default     = ""

  validation {
    condition     = var.agent_image == "" || can(regex("^[a-z0-9][a-z0-9._/:-]*[A-Za-z0-9_](@sha256:[0-9a-f]{64})?$", var.agent_image))
    error_message = "agent_image must be empty or a reference such as registry/name:tag or registry/name@sha256:<digest>."
  }
}

variable "install_name" {
  description = "Name of this install: the first part of its Kafka topics (<install_name>.batch.chunks, <install_name>.batch.requests) and consumer groups (<install_name>-batch-worker, <install_name>-batch-intake). Give a second install on the same Kafka another one."
  type        = string
  default     = "kinfer"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,38}[a-z0-9]$", var.install_name))
    error_message = "install_name: 2 to 40 lowercase letters, digits and '-', starting with a letter (it begins Kafka topic and consumer-group names)."
  }
}

variable "kubeconfig_path" {
  description = "Path of the kubeconfig of the target cluster."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "Context of the kubeconfig to use (null: its current context)."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Namespace of the Kinfer functions, Triton and eventing."
  type        = string
  default     = "kinfer"
}

variable "service_account_issuer" {
  description = "The cluster's service-account token issuer (kubectl get --raw /.well-known/openid-configuration: issuer); the event functions check it in the Knative Eventing OIDC tokens of the event senders (EVENT_OIDC_ISSUER)."
  type        = string
  default     = "https://kubernetes.default.svc"
}

variable "data_namespace" {
  description = "Namespace for the in-cluster PostgreSQL, Redis and MinIO (when no existing endpoint is given)."
  type        = string
  default     = "kinfer-data"
}

variable "domain" {
  description = "DNS domain of the cluster's Knative routes; the public API is served as api.<domain>."
  type        = string
}

variable "overlay" {
  description = "Which knative/overlays/<overlay> to apply: dev or prod."
  type        = string
  default     = "prod"

  validation {
    condition     = contains(["dev", "prod"], var.overlay)
    error_message = "overlay must be dev or prod."
  }
}

variable "gpu_count" {
  description = "GPUs per Triton replica (nvidia.com/gpu request and limit)."
  type        = number
  default     = 1

  validation {
    condition     = var.gpu_count >= 1 && floor(var.gpu_count) == var.gpu_count
    error_message = "gpu_count must be a whole number of at least 1."
  }
}

variable "gpu_node_selector" {
  description = "Node labels Triton's pods must match, e.g. { \"cloud.google.com/gke-accelerator\" = \"nvidia-l4\" }; empty: any node with a free GPU (Triton tolerates the nvidia.com/gpu taint)."
  type        = map(string)
  default     = {}
}

variable "triton_keep_warm" {
  description = "Keep one Triton replica running (min-scale 1) instead of scaling it to zero."
  type        = bool
  default     = false
}

variable "llm_backend" {
  description = "Serve generative models on a GPU Triton of their own: \"vllm\" adds knative/components/triton-llm (the Knative Service triton-llm, Triton's vLLM backend, scale-to-zero) and allows its address as a backend_url (docs/llm.md); \"none\" adds nothing."
  type        = string
  default     = "none"

  validation {
    condition     = contains(["none", "vllm"], var.llm_backend)
    error_message = "llm_backend must be \"none\" or \"vllm\"."
  }
}

variable "hf_token" {
  description = "Hugging Face token for gated models (Secret kinfer-hf-token, read by the triton-llm Service only); empty: no Secret, public models only."
  type        = string
  default     = ""
  sensitive   = true
}

variable "knative_versions" {
  description = "Knative release of each component (tag knative-v<version> of its repository; tests/fixtures/releases/README.md says why these): Serving and Kourier on one minor, Eventing and its Kafka extensions on one minor."
  type = object({
    serving        = string
    kourier        = string
    eventing       = string
    eventing_kafka = string
  })
  default = {
    serving        = "1.23.0"
    kourier        = "1.23.0"
    eventing       = "1.22.2"
    eventing_kafka = "1.22.3"
  }
}

variable "kafka_bootstrap_servers" {
  description = "Existing Kafka bootstrap servers (comma-separated). Empty: install Strimzi and a Kafka cluster."
  type        = string
  default     = ""
}

variable "kafka_chunk_partitions" {
  description = "Partitions of the chunk topic <install_name>.batch.chunks, set on its Strimzi KafkaTopic (null: 24 with the prod overlay, 12 with dev; see docs/operations.md for sizing). Partitions can be added, never removed."
  type        = number
  default     = null
}

variable "database_url" {
  description = "Existing PostgreSQL URL (postgresql+pg8000://user:password@host:5432/db). Empty: install PostgreSQL."
  type        = string
  default     = ""
  sensitive   = true
}

variable "redis_url" {
  description = "Existing Redis URL (redis://:password@host:6379/0). Empty: install Redis."
  type        = string
  default     = ""
  sensitive   = true
}

variable "s3_endpoint_url" {
  description = "Existing S3 API endpoint with scheme and port (https://minio.example.com:443). Empty: install MinIO."
  type        = string
  default     = ""

  validation {
    condition     = var.s3_endpoint_url == "" || can(regex("^https?://[^/:]+:[0-9]+$", var.s3_endpoint_url))
    error_message = "s3_endpoint_url must be empty or scheme://host:port (Triton needs the port)."
  }
}

variable "s3_public_endpoint_url" {
  description = "S3 endpoint that clients reach, used only to presign result URLs (empty: https://s3.<domain> with the in-cluster MinIO, else s3_endpoint_url)."
  type        = string
  default     = ""

  validation {
    condition     = var.s3_public_endpoint_url == "" || can(regex("^https?://[^/]+$", var.s3_public_endpoint_url))
    error_message = "s3_public_endpoint_url must be empty or scheme://host[:port]."
  }
}

variable "tls_certificate" {
  description = "PEM certificate (with chain) of the public Gateway, valid for api.<domain> and s3.<domain>. Empty: a self-signed certificate (to try Kinfer only)."
  type        = string
  default     = ""
}

variable "tls_private_key" {
  description = "PEM private key of tls_certificate."
  type        = string
  default     = ""
  sensitive   = true
}

variable "s3_region" {
  description = "Region of the S3 endpoint."
  type        = string
  default     = "us-east-1"
}

variable "s3_access_key_id" {
  description = "Access key of the existing S3 endpoint (ignored when MinIO is installed)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "s3_secret_access_key" {
  description = "Secret key of the existing S3 endpoint (ignored when MinIO is installed)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "kafka_sasl_username" {
  description = "SCRAM-SHA-512 user of the existing Kafka (kafka_bootstrap_servers; required with it). Ignored when Strimzi is installed: then each client has a KafkaUser of its own."
  type        = string
  default     = ""
}

variable "kafka_sasl_password" {
  description = "Password of kafka_sasl_username."
  type        = string
  default     = ""
  sensitive   = true
}

variable "kafka_ca_certificate" {
  description = "PEM certificate of the CA that signed the existing Kafka's broker certificates (kafka_bootstrap_servers; required with it: every client connects with SASL_SSL and checks the brokers against it). Ignored when Strimzi is installed: then terraform generates the Kafka's cluster CA."
  type        = string
  default     = ""
}

variable "s3_workload_identity_annotations" {
  description = "Annotations of the functions' ServiceAccount kinfer-function that bind it to a cloud identity for S3: IRSA { \"eks.amazonaws.com/role-arn\" = \"arn:aws:iam::...:role/...\" } or GKE Workload Identity { \"iam.gke.io/gcp-service-account\" = \"...\" }. Set: no static S3 keys are created or rendered (S3_CREDENTIALS=ambient); needs an existing s3_endpoint_url. Empty: static keys (one MinIO user per workload)."
  type        = map(string)
  default     = {}
}

variable "external_egress_cidrs" {
  description = "Where the functions' pods may connect for the external endpoints given (database_url, redis_url, s3_endpoint_url, kafka_bootstrap_servers, the cloud's token endpoints); narrow it to their addresses."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "external_egress_ports" {
  description = "TCP ports of the external endpoints (NetworkPolicy kinfer-external-egress, only when one is given)."
  type        = list(number)
  default     = [443, 5432, 6379, 9000, 9092, 9093]
}
