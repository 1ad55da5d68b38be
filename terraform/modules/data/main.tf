# PostgreSQL, Redis and MinIO: each installed from its chart unless an existing
# endpoint is given. Passwords are generated and only ever land in Secrets.

locals {
  install_postgres = var.database_url == ""
  install_redis    = var.redis_url == ""
  install_minio    = var.s3_endpoint_url == ""
}

resource "random_password" "postgres" {
  count   = local.install_postgres ? 1 : 0
  length  = 32
  special = false
}

resource "random_password" "redis" {
  count   = local.install_redis ? 1 : 0
  length  = 32
  special = false
}

resource "random_password" "minio" {
  count   = local.install_minio ? 1 : 0
  length  = 40
  special = false
}

resource "helm_release" "postgresql" {
  count            = local.install_postgres ? 1 : 0
  name             = "postgresql"
  repository       = "oci://registry-1.docker.io/bitnamicharts"
  chart            = "postgresql"
  version          = var.postgresql_chart_version
  namespace        = var.namespace
  create_namespace = true
  atomic           = true
  values = [yamlencode({
    auth = { username = "kinfer", database = "kinfer" }
    primary = {
      persistence = { size = "20Gi" }
      resources   = { requests = { cpu = "250m", memory = "512Mi" }, limits = { cpu = "2", memory = "2Gi" } }
    }
  })]
  set_sensitive {
    name  = "auth.password"
    value = random_password.postgres[0].result
  }
}

resource "helm_release" "redis" {
  count            = local.install_redis ? 1 : 0
  name             = "redis"
  repository       = "oci://registry-1.docker.io/bitnamicharts"
  chart            = "redis"
  version          = var.redis_chart_version
  namespace        = var.namespace
  create_namespace = true
  atomic           = true
  values = [yamlencode({
    architecture = "standalone"
    master = {
      persistence = { enabled = false }
      resources   = { requests = { cpu = "100m", memory = "256Mi" }, limits = { cpu = "1", memory = "1Gi" } }
    }
  })]
  set_sensitive {
    name  = "auth.password"
    value = random_password.redis[0].result
  }
}

resource "helm_release" "minio" {
  count            = local.install_minio ? 1 : 0
  name             = "minio"
  repository       = "https://charts.min.io/"
  chart            = "minio"
  version          = var.minio_chart_version
  namespace        = var.namespace
  create_namespace = true
  atomic           = true
  timeout          = 600
  values = [yamlencode({
    mode        = "standalone"
    rootUser    = "kinfer"
    persistence = { size = "50Gi" }
    resources   = { requests = { memory = "1Gi" } }
    buckets     = [for b in var.buckets : { name = b, policy = "none", purge = false }]
    # Input-bucket uploads become S3 event records on the batch-request topic,
    # which the KafkaSource batch-intake-source delivers to batch-intake.
    environment = {
      MINIO_SITE_REGION                 = var.s3_region
      MINIO_NOTIFY_KAFKA_ENABLE_KINFER  = "on"
      MINIO_NOTIFY_KAFKA_BROKERS_KINFER = var.kafka_brokers
      MINIO_NOTIFY_KAFKA_TOPIC_KINFER   = "kinfer.batch.requests"
    }
    customCommands = [
      { command = "event add myminio/kinfer-batch-inputs arn:minio:sqs::KINFER:kafka --event put --suffix .jsonl" },
    ]
  })]
  set_sensitive {
    name  = "rootPassword"
    value = random_password.minio[0].result
  }
}

locals {
  postgres_host = "postgresql.${var.namespace}.svc.cluster.local"
  redis_host    = "redis-master.${var.namespace}.svc.cluster.local"
  minio_url     = "http://minio.${var.namespace}.svc.cluster.local:9000"
}
