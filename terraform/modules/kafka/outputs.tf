output "bootstrap_servers" {
  description = "Comma-separated Kafka bootstrap servers."
  value       = local.install ? "kinfer-kafka-bootstrap.${var.namespace}.svc.cluster.local:9092" : var.bootstrap_servers
  depends_on  = [kustomization_resource.topic]
}
