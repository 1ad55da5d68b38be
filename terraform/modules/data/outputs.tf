output "database_url" {
  description = "PostgreSQL URL for DATABASE_URL."
  sensitive   = true
  value = (local.install_postgres
    ? "postgresql+pg8000://kinfer:${random_password.postgres[0].result}@${local.postgres_host}:5432/kinfer"
  : var.database_url)
}

output "redis_url" {
  description = "Redis URL for REDIS_URL."
  sensitive   = true
  value       = local.install_redis ? "redis://:${random_password.redis[0].result}@${local.redis_host}:6379/0" : var.redis_url
}

output "s3_endpoint_url" {
  description = "S3 API endpoint (scheme://host:port)."
  value       = local.install_minio ? local.minio_url : var.s3_endpoint_url
}

output "minio_installed" {
  description = "Whether MinIO runs in the cluster (then the platform exposes it through the Gateway for presigned result URLs)."
  value       = local.install_minio
}

output "s3_workloads" {
  description = "Workloads with S3 credentials of their own (keys of s3_credentials); none with a workload identity."
  value       = var.s3_workload_identity ? [] : keys(local.minio_policies)
}

output "s3_credentials" {
  description = "S3 access key pair per workload (batch, batch-intake, batch-worker, batch-deadletter, infer, models, models-public, triton): one MinIO user each, or the given key pair for every one of them."
  sensitive   = true
  value = { for name in(var.s3_workload_identity ? [] : keys(local.minio_policies)) : name => (local.install_minio
    ? { access_key_id = "kinfer-${name}", secret_access_key = random_password.minio_user[name].result }
    : { access_key_id = var.s3_access_key_id, secret_access_key = var.s3_secret_access_key })
  }
}

output "ready" {
  description = "Known at plan, available once the in-cluster data services are installed: what the platform waits for."
  value       = join(",", compact([local.install_postgres ? "postgresql" : "", local.install_redis ? "redis" : "", local.install_minio ? "minio" : ""]))
  depends_on  = [kustomization_resource.postgres, helm_release.valkey, helm_release.minio]
}

output "input_bucket" {
  description = "Bucket of batch inputs (presigned PUT through s3.<domain>)."
  value       = var.input_bucket
}

output "results_bucket" {
  description = "Bucket of batch results (presigned GET through s3.<domain>)."
  value       = var.results_bucket
}
