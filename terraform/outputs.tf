output "public_url" {
  description = "Base URL of the public API over HTTPS (/v1/models, /v1/infer, /v2 (KServe v2: models, health, server metadata), /v1/chat/completions, /v1/completions and /openai/v1 (OpenAI-compatible), /v1/batch, /v1/keys, /v1/audit, /v1/usage, /v1/backends); point api.<domain> (and s3.<domain>) at the kinfer Gateway's address."
  value       = module.platform.public_url
}

output "console_url" {
  description = "The Kinfer console (web page; sign in with an API key)."
  value       = module.platform.console_url
}

output "function_urls" {
  description = "Cluster-local URL of every Knative Service (the public API is public_url, through the Gateway)."
  value       = module.platform.function_urls
}

output "triton_url" {
  description = "gRPC address of Triton inside the cluster (TRITON_URL)."
  value       = module.platform.triton_url
}

output "kafka_bootstrap_servers" {
  description = "Kafka bootstrap servers the eventing sources and sinks use."
  value       = module.kafka.bootstrap_servers
}

output "s3_endpoint_url" {
  description = "S3 endpoint of the model repository and batch buckets (upload models with `kinfer deploy upload-models`)."
  value       = module.data.s3_endpoint_url
}

output "s3_public_url" {
  description = "S3 endpoint of presigned result URLs (https://s3.<domain> with the in-cluster MinIO)."
  value       = module.platform.s3_public_url
}
