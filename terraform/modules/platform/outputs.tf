output "public_url" {
  description = "Base URL of the public API behind the kinfer Gateway (HTTPS; HTTP redirects)."
  value       = "https://${local.api_host}"
  depends_on  = [kustomization_resource.p1]
}

output "console_url" {
  description = "The console, a web page on the public host (/console/)."
  value       = "https://${local.api_host}/console/"
  depends_on  = [kustomization_resource.p1]
}

output "s3_public_url" {
  description = "S3 endpoint in presigned result URLs (S3_PUBLIC_ENDPOINT_URL)."
  value       = local.config.S3_PUBLIC_ENDPOINT_URL
}

output "function_urls" {
  description = "Cluster-local URL of every Knative Service (public ones are reached through public_url)."
  value       = { for s in concat(local.public_services, local.internal_services) : s => "http://${s}.${var.namespace}.svc.cluster.local" }
  depends_on  = [kustomization_resource.p1]
}

output "triton_url" {
  description = "TRITON_URL: Triton's gRPC address through Knative (h2c on port 80)."
  value       = local.triton_url
}
