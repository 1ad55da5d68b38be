# PostgreSQL, Redis (Valkey) and MinIO in the cluster, each unless an existing
# endpoint is given. Passwords are generated and only ever land in Secrets.
#
# Every image comes from a maintained source and is pinned (tests/deploy/
# test_terraform_rules.py keeps the list with the reasons): the Bitnami charts
# used before pulled versioned docker.io/bitnami images that were removed
# (bitnami/containers#83267), so the first apply ended in ImagePullBackOff.
# - PostgreSQL: the CloudNativePG operator (CNCF) and one Cluster of its
#   postgresql image.
# - Redis: Valkey (Linux Foundation), its official chart and image.
# - MinIO: its chart (the last community chart) running Silo's images
#   (docker.io/pgsty/silo, pgsty/mc), the maintained community fork of MinIO: MinIO's
#   community edition is no longer maintained (source-only since 2025-10, repository
#   archived, its images withdrawn from Docker Hub and quay.io), and its last image lacks
#   the CVE-2025-62506 fix. Silo keeps MinIO's S3 API, presigned URLs, MINIO_* settings,
#   IAM policies and Kafka notifications; the chart's "minio server" command is translated
#   by its entrypoint. In production s3_endpoint_url may still name a managed S3 service
#   (docs/operations.md).

locals {
  install_postgres = var.database_url == ""
  install_redis    = var.redis_url == ""
  install_minio    = var.s3_endpoint_url == ""
  install_any      = local.install_postgres || local.install_redis || local.install_minio

  postgres_cluster = "kinfer-pg"
  postgres_host    = "${local.postgres_cluster}-rw.${var.namespace}.svc.cluster.local"
  redis_host       = "valkey.${var.namespace}.svc.cluster.local"
  minio_url        = "http://minio.${var.namespace}.svc.cluster.local:9000"

  # registry/repository:tag, as the charts take them; the MinIO chart writes
  # "<repository>:<tag>", so a digest rides in the tag ("<tag>@sha256:...").
  valkey_image   = regex("^(?P<registry>[^/]+)/(?P<repository>[^:]+):(?P<tag>[^:]+)$", var.valkey_image)
  minio_image    = regex("^(?P<repository>[^:@]+):(?P<tag>[^:@]+(?:@sha256:[0-9a-f]{64})?)$", var.minio_image)
  minio_mc_image = regex("^(?P<repository>[^:@]+):(?P<tag>[^:@]+(?:@sha256:[0-9a-f]{64})?)$", var.minio_mc_image)

  # One MinIO user per workload that touches object storage, each with only the
  # access it needs (ListBucket on both batch buckets: the functions check that
  # they exist). Functions not listed get no S3 credentials at all.
  inputs  = "arn:aws:s3:::${var.input_bucket}"
  results = "arn:aws:s3:::${var.results_bucket}"
  models  = "arn:aws:s3:::${var.model_bucket}"
  capture = "arn:aws:s3:::${var.capture_bucket}"
  list    = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
  write   = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
  minio_policies = {
    "batch" = [ # submits jobs: reads input_url, writes and cleans chunk inputs, presigns results; replays read captures
      { resources = [local.inputs, local.results, local.capture], actions = local.list },
      { resources = ["${local.inputs}/*"], actions = concat(["s3:GetObject", "s3:DeleteObject"], local.write) },
      { resources = ["${local.results}/*", "${local.capture}/*"], actions = ["s3:GetObject"] },
    ]
    "infer" = [ # payload capture: writes sampled requests
      { resources = [local.capture], actions = local.list },
      { resources = ["${local.capture}/*"], actions = local.write },
    ]
    "batch-intake" = [ # reads uploaded inputs, writes and cleans chunk inputs
      { resources = [local.inputs, local.results], actions = local.list },
      { resources = ["${local.inputs}/*"], actions = concat(["s3:GetObject", "s3:DeleteObject"], local.write) },
    ]
    "batch-worker" = [ # reads chunk inputs, writes chunk results, merges them; captures async requests
      { resources = [local.inputs, local.results, local.capture], actions = local.list },
      { resources = ["${local.inputs}/*"], actions = ["s3:GetObject"] },
      { resources = ["${local.results}/*"], actions = concat(["s3:GetObject"], local.write) },
      { resources = ["${local.capture}/*"], actions = local.write },
    ]
    "batch-deadletter" = [ # fails chunks; the last one merges the results
      { resources = [local.inputs, local.results], actions = local.list },
      { resources = ["${local.results}/*"], actions = concat(["s3:GetObject"], local.write) },
    ]
    "models" = [ # writes pushed artifacts into the model repository, removes deleted versions; captures :predict
      { resources = [local.models, local.capture], actions = local.list },
      { resources = ["${local.models}/*"], actions = concat(["s3:GetObject", "s3:DeleteObject"], local.write) },
      { resources = ["${local.capture}/*"], actions = local.write },
    ]
    "models-public" = [ # the same registry function behind the public route (kinfer models push); captures :predict
      { resources = [local.models, local.capture], actions = local.list },
      { resources = ["${local.models}/*"], actions = concat(["s3:GetObject", "s3:DeleteObject"], local.write) },
      { resources = ["${local.capture}/*"], actions = local.write },
    ]
    "triton" = [ # the model agent beside Triton reads the model repository
      { resources = [local.models], actions = local.list },
      { resources = ["${local.models}/*"], actions = ["s3:GetObject"] },
    ]
  }
}

resource "kubernetes_namespace" "data" {
  count = local.install_any ? 1 : 0
  metadata {
    name   = var.namespace
    labels = { "app.kubernetes.io/part-of" = "kinfer" }
  }
}

# -- PostgreSQL: CloudNativePG ------------------------------------------------------

resource "random_password" "postgres" {
  count   = local.install_postgres ? 1 : 0
  length  = 32
  special = false
}

resource "helm_release" "cnpg" {
  count            = local.install_postgres ? 1 : 0
  name             = "cnpg"
  repository       = "https://cloudnative-pg.github.io/charts"
  chart            = "cloudnative-pg"
  version          = var.cnpg_chart_version
  namespace        = "cnpg-system"
  create_namespace = true
  atomic           = true
  wait             = true
  timeout          = 600
}

# The owner's credentials of the kinfer database (initdb reads them).
resource "kubernetes_secret" "postgres" {
  count = local.install_postgres ? 1 : 0
  metadata {
    name      = "${local.postgres_cluster}-owner"
    namespace = kubernetes_namespace.data[0].metadata[0].name
  }
  type = "kubernetes.io/basic-auth"
  data = { username = "kinfer", password = random_password.postgres[0].result }
}

resource "kustomization_resource" "postgres" {
  count = local.install_postgres ? 1 : 0
  manifest = jsonencode({
    apiVersion = "postgresql.cnpg.io/v1"
    kind       = "Cluster"
    metadata   = { name = local.postgres_cluster, namespace = kubernetes_namespace.data[0].metadata[0].name }
    spec = {
      instances = var.postgres_instances
      imageName = var.postgres_image
      storage   = { size = var.postgres_storage_size }
      resources = { requests = { cpu = "250m", memory = "512Mi" }, limits = { cpu = "2", memory = "2Gi" } }
      bootstrap = { initdb = { database = "kinfer", owner = "kinfer", secret = { name = kubernetes_secret.postgres[0].metadata[0].name } } }
    }
  })
  timeouts {
    create = "10m"
    update = "10m"
  }
  depends_on = [helm_release.cnpg]
}

# -- Redis: Valkey --------------------------------------------------------------------

resource "random_password" "redis" {
  count   = local.install_redis ? 1 : 0
  length  = 32
  special = false
}

# The ACL password of the "default" user (the chart reads the key named after the user).
resource "kubernetes_secret" "valkey" {
  count = local.install_redis ? 1 : 0
  metadata {
    name      = "valkey-users"
    namespace = kubernetes_namespace.data[0].metadata[0].name
  }
  data = { default = random_password.redis[0].result }
}

resource "helm_release" "valkey" {
  count      = local.install_redis ? 1 : 0
  name       = "valkey"
  repository = "https://valkey.io/valkey-helm/"
  chart      = "valkey"
  version    = var.valkey_chart_version
  namespace  = kubernetes_namespace.data[0].metadata[0].name
  atomic     = true
  wait       = true
  timeout    = 600
  values = [yamlencode({
    image = local.valkey_image
    auth = {
      enabled             = true
      usersExistingSecret = kubernetes_secret.valkey[0].metadata[0].name
      aclUsers            = { default = { permissions = "~* &* +@all" } }
    }
    resources = { requests = { cpu = "100m", memory = "256Mi" }, limits = { cpu = "1", memory = "1Gi" } }
  })]
}

# -- MinIO ------------------------------------------------------------------------------

resource "random_password" "minio" {
  count   = local.install_minio ? 1 : 0
  length  = 40
  special = false
}

resource "random_password" "minio_user" {
  for_each = local.install_minio ? toset(keys(local.minio_policies)) : toset([])
  length   = 40
  special  = false
}

resource "kubernetes_secret" "minio_users" {
  count = local.install_minio ? 1 : 0
  metadata {
    name      = "minio-users"
    namespace = kubernetes_namespace.data[0].metadata[0].name
  }
  data = { for name, password in random_password.minio_user : name => password.result }
}

# The Kafka's CA, mounted by the chart into MinIO's trusted CAs (trustedCertsSecret ->
# /etc/minio/certs/CAs): its bucket notifications check the brokers' certificates with it.
resource "kubernetes_secret" "kafka_ca" {
  count = local.install_minio ? 1 : 0
  metadata {
    name      = "kinfer-kafka-ca"
    namespace = kubernetes_namespace.data[0].metadata[0].name
    labels    = { "app.kubernetes.io/part-of" = "kinfer" }
  }
  data = { "kafka-ca.crt" = var.kafka_ca_certificate }
}

resource "helm_release" "minio" {
  count      = local.install_minio ? 1 : 0
  name       = "minio"
  repository = "https://charts.min.io/"
  chart      = "minio"
  version    = var.minio_chart_version
  namespace  = kubernetes_namespace.data[0].metadata[0].name
  atomic     = true
  wait       = true
  timeout    = 600
  values = [yamlencode({
    image       = local.minio_image
    mcImage     = local.minio_mc_image
    mode        = "standalone"
    rootUser    = "kinfer"
    persistence = { size = "50Gi" }
    resources   = { requests = { cpu = "250m", memory = "1Gi" }, limits = { cpu = "2", memory = "2Gi" } }
    # The chart's setup jobs (mc: buckets, policies, users, event hooks), bounded too.
    makeBucketJob    = { resources = { requests = { cpu = "50m", memory = "128Mi" }, limits = { cpu = "250m", memory = "256Mi" } } }
    makePolicyJob    = { resources = { requests = { cpu = "50m", memory = "128Mi" }, limits = { cpu = "250m", memory = "256Mi" } } }
    makeUserJob      = { resources = { requests = { cpu = "50m", memory = "128Mi" }, limits = { cpu = "250m", memory = "256Mi" } } }
    customCommandJob = { resources = { requests = { cpu = "50m", memory = "128Mi" }, limits = { cpu = "250m", memory = "256Mi" } } }
    buckets          = [for b in [var.input_bucket, var.results_bucket, var.model_bucket, var.capture_bucket] : { name = b, policy = "none", purge = false }]
    # Replaces the chart's default users (console/console123 with consoleAdmin).
    policies = [for name, statements in local.minio_policies : { name = "kinfer-${name}", statements = statements }]
    users = [for name in keys(local.minio_policies) : {
      accessKey         = "kinfer-${name}", existingSecret = kubernetes_secret.minio_users[0].metadata[0].name,
      existingSecretKey = name, policy = "kinfer-${name}"
    }]
    # Input-bucket uploads become S3 event records on the batch-request topic,
    # which the KafkaSource batch-intake-source delivers to batch-intake.
    # As the KafkaUser kinfer-minio (SCRAM-SHA-512, Write on the request topic only), over
    # TLS (SASL_SSL) checked against the Kafka's CA.
    trustedCertsSecret = kubernetes_secret.kafka_ca[0].metadata[0].name
    environment = {
      MINIO_SITE_REGION                         = var.s3_region
      MINIO_NOTIFY_KAFKA_ENABLE_KINFER          = "on"
      MINIO_NOTIFY_KAFKA_BROKERS_KINFER         = var.kafka_brokers
      MINIO_NOTIFY_KAFKA_TOPIC_KINFER           = var.batch_request_topic
      MINIO_NOTIFY_KAFKA_SASL_KINFER            = "on"
      MINIO_NOTIFY_KAFKA_SASL_MECHANISM_KINFER  = "sha512"
      MINIO_NOTIFY_KAFKA_SASL_USERNAME_KINFER   = var.kafka_credentials.user
      MINIO_NOTIFY_KAFKA_TLS_KINFER             = "on"
      MINIO_NOTIFY_KAFKA_TLS_SKIP_VERIFY_KINFER = "off"
    }
    customCommands = [
      { command = "event add myminio/${var.input_bucket} arn:minio:sqs::KINFER:kafka --event put --suffix .jsonl" },
    ]
  })]
  set_sensitive {
    name  = "rootPassword"
    value = random_password.minio[0].result
  }
  set_sensitive {
    name  = "environment.MINIO_NOTIFY_KAFKA_SASL_PASSWORD_KINFER"
    value = var.kafka_credentials.password
  }
}

# -- NetworkPolicies (knative/data): deny by default, allow the data ports to the functions
# namespace, MinIO's S3 port to the Gateway, the operators, and MinIO to Kafka. YAML
# heredoc patches: tests/deploy/test_network.py renders them.
data "kustomization_overlay" "network" {
  count     = local.install_any ? 1 : 0
  resources = [abspath("${path.module}/../../../knative/data")]
  namespace = kubernetes_namespace.data[0].metadata[0].name

  patches {
    target {
      kind = "NetworkPolicy"
      name = "allow-functions"
    }
    patch = <<-YAML
      - op: test
        path: /spec/ingress/0/from/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: kinfer
      - op: replace
        path: /spec/ingress/0/from/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: "${var.functions_namespace}"
    YAML
  }

  patches {
    target {
      kind = "NetworkPolicy"
      name = "allow-egress"
    }
    patch = <<-YAML
      - op: test
        path: /spec/egress/1/to/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: kafka
      - op: replace
        path: /spec/egress/1/to/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: "${var.kafka_namespace}"
    YAML
  }
}

resource "kustomization_resource" "network" {
  for_each = local.install_any ? data.kustomization_overlay.network[0].ids : toset([])
  manifest = data.kustomization_overlay.network[0].manifests[each.value]
}

# Workload identity replaces static keys only with an S3 service that honours it.
resource "terraform_data" "workload_identity_needs_external_s3" {
  count = var.s3_workload_identity ? 1 : 0
  lifecycle {
    precondition {
      condition     = !local.install_minio
      error_message = "s3_workload_identity_annotations needs s3_endpoint_url (a cloud S3 service): the in-cluster MinIO takes static keys."
    }
  }
}
