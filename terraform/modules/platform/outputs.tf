output "public_url" {
  description = "Base URL of the public API behind the kinfer Gateway."
  value       = "http://api.${var.domain}"
  depends_on  = [kustomization_resource.p1]
}

output "function_urls" {
  description = "Knative URL of every Service."
  value = merge(
    { for s in local.public_services : s => "http://${s}.${var.namespace}.${var.domain}" },
    { for s in local.internal_services : s => "http://${s}.${var.namespace}.svc.cluster.local" },
  )
  depends_on = [kustomization_resource.p1]
}

output "triton_url" {
  description = "TRITON_URL: Triton's gRPC address through Knative (h2c on port 80)."
  value       = local.triton_url
}
