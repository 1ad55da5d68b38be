output "database_url" {
  description = "PostgreSQL URL for DATABASE_URL."
  sensitive   = true
  value = (local.install_postgres
    ? "postgresql+pg8000://kinfer:${random_password.postgres[0].result}@${local.postgres_host}:5432/kinfer"
  : var.database_url)
  depends_on = [helm_release.postgresql]
}

output "redis_url" {
  description = "Redis URL for REDIS_URL."
  sensitive   = true
  value       = local.install_redis ? "redis://:${random_password.redis[0].result}@${local.redis_host}:6379/0" : var.redis_url
  depends_on  = [helm_release.redis]
}

output "s3_endpoint_url" {
  description = "S3 API endpoint (scheme://host:port)."
  value       = local.install_minio ? local.minio_url : var.s3_endpoint_url
  depends_on  = [helm_release.minio]
}

output "s3_access_key_id" {
  description = "S3 access key."
  sensitive   = true
  value       = local.install_minio ? "kinfer" : var.s3_access_key_id
}

output "s3_secret_access_key" {
  description = "S3 secret key."
  sensitive   = true
  value       = local.install_minio ? random_password.minio[0].result : var.s3_secret_access_key
}

output "ready" {
  description = "Known at plan, available once the in-cluster data services are installed: what the platform waits for."
  value       = join(",", compact([local.install_postgres ? "postgresql" : "", local.install_redis ? "redis" : "", local.install_minio ? "minio" : ""]))
  depends_on  = [helm_release.postgresql, helm_release.redis, helm_release.minio]
}
