output "bootstrap_servers" {
  description = "Comma-separated Kafka bootstrap servers."
  value       = local.install ? "kinfer-kafka-bootstrap.${var.namespace}.svc.cluster.local:9092" : var.bootstrap_servers
}

output "ready" {
  description = "Known at plan, available once the Kafka cluster and its topics are applied: what the platform waits for."
  value       = local.install ? "strimzi-${var.strimzi_version}" : "external"
  depends_on  = [kustomization_resource.strimzi]
}

output "credentials" {
  description = "SCRAM-SHA-512 credentials per Kafka client (sink, worker-source, intake-source, minio): its KafkaUser, or the user given for an existing Kafka."
  sensitive   = true
  value = { for client, user in local.users : client => (local.install
    ? { user = user, password = random_password.user[client].result }
    : { user = var.sasl_username, password = var.sasl_password })
  }
}

output "ca_certificate" {
  description = "PEM certificate the Kafka clients check the brokers against (SASL_SSL): the Strimzi cluster CA generated here, or ca_certificate for an existing Kafka."
  value       = local.install ? tls_self_signed_cert.cluster_ca[0].cert_pem : var.ca_certificate
}
