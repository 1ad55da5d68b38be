output "gateway_class" {
  description = "GatewayClass the kinfer Gateway uses."
  value       = "kinfer"
  depends_on  = [kustomization_resource.gateway_class]
}

output "internal_ingress" {
  description = "Kourier's cluster-internal ingress Service (namespace/name) that the public routes target."
  value       = { namespace = "kourier-system", name = "kourier-internal" }
  depends_on  = [kustomization_resource.serving_p2]
}

output "ready" {
  description = "Known at plan, available once Knative, its Kafka extensions and Envoy Gateway are applied: what the platform waits for."
  value       = "serving-${var.knative_versions.serving},eventing-${var.knative_versions.eventing}"
  depends_on = [
    kustomization_resource.serving_p2, kustomization_resource.eventing_p2,
    kustomization_resource.eventing_kafka_p2, kustomization_resource.gateway_class, kustomization_resource.network,
  ]
}
