output "bootstrap_servers" {
  description = "Comma-separated Kafka bootstrap servers."
  value       = local.install ? "kinfer-kafka-bootstrap.${var.namespace}.svc.cluster.local:9092" : var.bootstrap_servers
}

output "ready" {
  description = "Known at plan, available once the Kafka cluster and its topics are applied: what the platform waits for."
  value       = local.install ? "strimzi-${var.strimzi_version}" : "external"
  depends_on  = [kustomization_resource.strimzi]
}
