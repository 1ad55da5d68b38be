# The Kinfer platform: its namespace and Secrets, then knative/overlays/<overlay>
# rendered with kustomize, with the image, namespace, endpoints and GPU count
# of this deployment patched in.

locals {
  knative_dir = abspath("${path.module}/../../../knative")
  brokers     = [for s in split(",", var.kafka_brokers) : trimspace(s) if trimspace(s) != ""]
  triton_url  = "triton.${var.namespace}.svc.cluster.local:80"

  # Services behind each rule of the HTTPRoute kinfer-public, in rule order
  # (knative/base/routing.yaml; tests/unit/test_terraform.py checks they match).
  route_services = ["models-public", "infer", "infer", "batch", "keys", "backends", "console"]

  public_services   = ["models-public", "infer", "batch", "keys", "console"]
  internal_services = ["models", "batch-intake", "batch-worker", "batch-deadletter", "backends", "triton"]

  # Endpoints that depend on this deployment; everything else keeps the
  # overlay's values.
  config = {
    S3_ENDPOINT_URL      = var.s3_endpoint_url
    S3_REGION            = var.s3_region
    TRITON_URL           = local.triton_url
    MODEL_REPOSITORY_URI = "s3://${var.model_bucket}/${var.model_prefix}"
    # The senders of events (EVENT_AUTH=oidc in the prod overlay): the KafkaSources' OIDC service
    # accounts in this namespace (<source>-oidc-sources.knative.dev-kafkasource, eventing
    # pkg/auth/serviceaccount.go at knative-v1.22.2), their tokens minted by this issuer.
    EVENT_OIDC_ISSUER = var.service_account_issuer
    EVENT_OIDC_SUBJECTS = join(",", [
      "system:serviceaccount:${var.namespace}:batch-worker-source-oidc-sources.knative.dev-kafkasource",
      "system:serviceaccount:${var.namespace}:batch-intake-source-oidc-sources.knative.dev-kafkasource",
    ])
    # Presigned result URLs must name a host clients reach (SigV4 signs it).
    S3_PUBLIC_ENDPOINT_URL = (var.s3_public_endpoint_url != "" ? var.s3_public_endpoint_url
    : var.minio_installed ? "https://${local.s3_host}" : "")
  }
  # With llm_backend, the triton-llm Service is a backend_url registrations may name (the component
  # allows the address of namespace kinfer; this one is this namespace's). Without it the overlay's
  # BACKEND_ALLOWLIST stands.
  llm_url    = "triton-llm.${var.namespace}.svc.cluster.local:80"
  llm_config = var.llm_backend != "none" ? { BACKEND_ALLOWLIST = local.llm_url, PROBE_SKIP_BACKENDS = local.llm_url } : {}

  api_host = "api.${var.domain}"
  s3_host  = "s3.${var.domain}"

  # Kafka clients of the eventing data plane, in eventing-kafka-broker's auth Secret
  # format (control-plane/pkg/security/secret.go at knative-v1.22.3: protocol,
  # sasl.mechanism, user, password, ca.crt): KafkaSink spec.auth.secret.ref and the
  # KafkaSources' spec.net.sasl and spec.net.tls secretKeyRefs (knative/base/eventing.yaml).
  # SASL_SSL: SCRAM-SHA-512 over TLS, the brokers checked against the Kafka's CA.
  kafka_secrets = { for client in ["sink", "worker-source", "intake-source"] : "kinfer-kafka-${client}" => {
    protocol         = "SASL_SSL"
    "sasl.mechanism" = "SCRAM-SHA-512"
    user             = var.kafka_credentials[client].user
    password         = var.kafka_credentials[client].password
    "ca.crt"         = var.kafka_ca_certificate
  } }

  secrets = {
    "kinfer-database" = { DATABASE_URL = var.database_url }
    "kinfer-redis"    = { REDIS_URL = var.redis_url }
    # Triton's repository API key: read by the triton container (to check it) and the
    # model agent (to send it) only (knative/base/services/triton.yaml).
    "kinfer-triton-admin" = { TRITON_ADMIN_KEY = random_password.triton_admin.result }
    # The master key of async inference callbacks (Kinfer-Signature), read by infer, batch-worker and
    # keys: each API key's callback secret derives from it (shown at key creation or rotation);
    # receivers verify with their key's secret, never with this one.
    "kinfer-callback" = { CALLBACK_SIGNING_SECRET = random_password.callback_signing.result }
  }

  workload_identity = length(var.s3_workload_identity_annotations) > 0
  components = concat(
    var.triton_keep_warm ? ["${local.knative_dir}/components/triton-warm"] : [],
    local.workload_identity ? ["${local.knative_dir}/components/s3-workload-identity"] : [],
    var.llm_backend != "none" ? ["${local.knative_dir}/components/triton-llm"] : [],
  )
}

# The Hugging Face token of the triton-llm Service (its HF_TOKEN, an optional Secret reference: public
# models need none), only when one is given; nothing else reads it.
resource "kubernetes_secret" "hf_token" {
  count = var.llm_backend != "none" && nonsensitive(var.hf_token != "") ? 1 : 0
  metadata {
    name      = "kinfer-hf-token"
    namespace = kubernetes_namespace.kinfer.metadata[0].name
    labels    = { "app.kubernetes.io/part-of" = "kinfer" }
  }
  type = "Opaque"
  data = { HF_TOKEN = var.hf_token }
}

resource "random_password" "triton_admin" {
  length  = 48
  special = false
}

resource "random_password" "callback_signing" {
  length  = 48
  special = false
}

# The gate every platform resource is ordered behind (resource-level ordering;
# see terraform/main.tf for why not a module-level depends_on).
resource "terraform_data" "prerequisites" {
  input = var.prerequisites
}

resource "kubernetes_namespace" "kinfer" {
  depends_on = [terraform_data.prerequisites]
  metadata {
    name = var.namespace
    labels = {
      "app.kubernetes.io/part-of"          = "kinfer"
      "pod-security.kubernetes.io/enforce" = "restricted"
    }
  }
}

resource "kubernetes_secret" "kinfer" {
  for_each = merge(local.secrets, local.kafka_secrets)
  metadata {
    name      = each.key
    namespace = kubernetes_namespace.kinfer.metadata[0].name
    labels    = { "app.kubernetes.io/part-of" = "kinfer" }
  }
  type = "Opaque"
  data = each.value
}

# One S3 key pair per workload that touches object storage (kinfer-s3-<workload>);
# the other functions get none.
resource "kubernetes_secret" "s3" {
  for_each = toset(var.s3_workloads)
  metadata {
    name      = "kinfer-s3-${each.key}"
    namespace = kubernetes_namespace.kinfer.metadata[0].name
    labels    = { "app.kubernetes.io/part-of" = "kinfer" }
  }
  type = "Opaque"
  data = {
    S3_ACCESS_KEY_ID     = var.s3_credentials[each.key].access_key_id
    S3_SECRET_ACCESS_KEY = var.s3_credentials[each.key].secret_access_key
  }
}

# The Gateway's certificate (Secret kinfer-tls): the one given, or a self-signed
# one for api.<domain> and s3.<domain> to try Kinfer (clients must trust it).
resource "tls_private_key" "gateway" {
  count       = var.tls_certificate == "" ? 1 : 0
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "gateway" {
  count           = var.tls_certificate == "" ? 1 : 0
  private_key_pem = tls_private_key.gateway[0].private_key_pem
  dns_names       = [local.api_host, local.s3_host]
  subject {
    common_name  = local.api_host
    organization = "Kinfer (self-signed)"
  }
  validity_period_hours = 24 * 365
  early_renewal_hours   = 24 * 30
  allowed_uses          = ["digital_signature", "key_encipherment", "server_auth"]
}

resource "kubernetes_secret" "tls" {
  metadata {
    name      = "kinfer-tls"
    namespace = kubernetes_namespace.kinfer.metadata[0].name
    labels    = { "app.kubernetes.io/part-of" = "kinfer" }
  }
  type = "kubernetes.io/tls"
  data = {
    "tls.crt" = var.tls_certificate != "" ? var.tls_certificate : tls_self_signed_cert.gateway[0].cert_pem
    "tls.key" = var.tls_certificate != "" ? var.tls_private_key : tls_private_key.gateway[0].private_key_pem
  }
}

# Lets the HTTPRoute in var.namespace send traffic to Kourier's internal ingress.
resource "kustomization_resource" "reference_grant" {
  manifest = jsonencode({
    apiVersion = "gateway.networking.k8s.io/v1beta1"
    kind       = "ReferenceGrant"
    metadata   = { name = "kinfer-routes-${var.namespace}", namespace = "kourier-system" }
    spec = {
      from = [{ group = "gateway.networking.k8s.io", kind = "HTTPRoute", namespace = var.namespace }]
      to   = [{ group = "", kind = "Service", name = "kourier-internal" }]
    }
  })
  depends_on = [terraform_data.prerequisites]
}

# The database migration (knative/jobs/db-migrate.yaml, kept alike by the static
# checks) as its own step: named per image, so a new image runs a new Job (a
# Job's spec is immutable) and an unchanged one does not drift; terraform waits
# for it to complete before the overlay's Services (new revisions) roll out. No
# ttlSecondsAfterFinished: a Job deleted by its TTL would be recreated by the
# next apply.
resource "kubernetes_service_account_v1" "migrate" {
  metadata {
    name      = "kinfer-migrate"
    namespace = kubernetes_namespace.kinfer.metadata[0].name
    labels    = { "app.kubernetes.io/part-of" = "kinfer" }
  }
  automount_service_account_token = false
}

resource "kubernetes_job_v1" "migrate" {
  metadata {
    name      = "kinfer-db-migrate-${substr(sha256(var.image), 0, 12)}"
    namespace = kubernetes_namespace.kinfer.metadata[0].name
    labels = {
      "app.kubernetes.io/name"      = "kinfer-db-migrate"
      "app.kubernetes.io/component" = "migration"
      "app.kubernetes.io/part-of"   = "kinfer"
    }
  }
  spec {
    backoff_limit           = 6
    active_deadline_seconds = 900
    template {
      metadata {
        labels = { "app.kubernetes.io/name" = "kinfer-db-migrate" }
      }
      spec {
        restart_policy                  = "OnFailure"
        service_account_name            = kubernetes_service_account_v1.migrate.metadata[0].name
        automount_service_account_token = false
        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          run_as_group    = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }
        container {
          name              = "migrate"
          image             = var.image
          image_pull_policy = "Always"
          command           = ["kinfer", "db", "upgrade"]
          env {
            name = "DATABASE_URL"
            value_from {
              secret_key_ref {
                name = kubernetes_secret.kinfer["kinfer-database"].metadata[0].name
                key  = "DATABASE_URL"
              }
            }
          }
          resources {
            requests = { cpu = "100m", memory = "128Mi" }
            limits   = { cpu = "500m", memory = "256Mi" }
          }
          security_context {
            run_as_non_root            = true
            run_as_user                = 10001
            run_as_group               = 10001
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            privileged                 = false
            capabilities {
              drop = ["ALL"]
            }
            seccomp_profile {
              type = "RuntimeDefault"
            }
          }
          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
        }
        volume {
          name = "tmp"
          empty_dir {
            size_limit = "64Mi"
          }
        }
      }
    }
  }
  wait_for_completion = true
  timeouts {
    create = "15m"
    update = "15m"
  }
}

data "kustomization_overlay" "kinfer" {
  resources  = ["${local.knative_dir}/overlays/${var.overlay}"]
  components = local.components
  namespace  = var.namespace

  # The functions' egress to the data namespace (knative/base/networkpolicy.yaml).
  patches {
    target {
      kind = "NetworkPolicy"
      name = "allow-platform-egress"
    }
    patch = <<-YAML
      - op: test
        path: /spec/egress/0/to/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: kinfer-data
      - op: replace
        path: /spec/egress/0/to/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: "${var.data_namespace}"
    YAML
  }

  patches {
    target {
      kind = "NetworkPolicy"
      name = "kinfer-db-migrate"
    }
    patch = <<-YAML
      - op: test
        path: /spec/egress/0/to/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: kinfer-data
      - op: replace
        path: /spec/egress/0/to/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: "${var.data_namespace}"
    YAML
  }

  # IRSA / Workload Identity: the functions' ServiceAccount names the cloud identity.
  dynamic "patches" {
    for_each = local.workload_identity ? [1] : []
    content {
      target {
        kind = "ServiceAccount"
        name = "kinfer-function"
      }
      patch = jsonencode([{ op = "add", path = "/metadata/annotations", value = var.s3_workload_identity_annotations }])
    }
  }

  # Images by patches, not an `images` transformer: the functions and the model agent
  # get different images (agent.tf), and a transformer matching both would give the
  # agent every new function image, and so the Triton Service a new revision (a GPU
  # started) on every deploy. The patches below are YAML heredocs so that
  # tests/deploy/test_agent_image.py can render them.
  patches {
    target {
      group          = "serving.knative.dev"
      kind           = "Service"
      label_selector = "app.kubernetes.io/component=function"
    }
    patch = <<-YAML
      - op: replace
        path: /spec/template/spec/containers/0/image
        value: "${var.image}"
    YAML
  }

  patches {
    target {
      group = "serving.knative.dev"
      kind  = "Service"
      name  = "triton"
    }
    patch = <<-YAML
      - op: test
        path: /spec/template/spec/containers/1/name
        value: model-agent
      - op: replace
        path: /spec/template/spec/containers/1/image
        value: "${local.agent_image}"
    YAML
  }

  # The triton-llm Service (llm_backend, knative/components/triton-llm; without it these match
  # nothing): its model agent runs the triton Service's agent image, and serves this namespace's address.
  patches {
    target {
      group = "serving.knative.dev"
      kind  = "Service"
      name  = "triton-llm"
    }
    patch = <<-YAML
      - op: test
        path: /spec/template/spec/containers/1/name
        value: model-agent
      - op: replace
        path: /spec/template/spec/containers/1/image
        value: "${local.agent_image}"
    YAML
  }

  patches {
    target {
      group = "serving.knative.dev"
      kind  = "Service"
      name  = "triton-llm"
    }
    patch = jsonencode(concat([
      { op = "test", path = "/spec/template/spec/containers/1/env/0/name", value = "AGENT_BACKEND" },
      { op = "replace", path = "/spec/template/spec/containers/1/env/0/value", value = local.llm_url },
      ], length(var.gpu_node_selector) > 0 ? [
      { op = "add", path = "/spec/template/spec/nodeSelector", value = var.gpu_node_selector },
    ] : []))
  }

  # Kafka names of this install (terraform/main.tf kafka_names; the overlays'
  # knative/components/install-name does the same from their install.yaml).
  patches {
    target {
      group = "eventing.knative.dev"
      kind  = "KafkaSink"
      name  = "batch-chunks"
    }
    patch = <<-YAML
      - op: replace
        path: /spec/topic
        value: "${var.kafka_names.chunk_topic}"
    YAML
  }

  patches {
    target {
      group = "sources.knative.dev"
      kind  = "KafkaSource"
      name  = "batch-worker-source"
    }
    patch = <<-YAML
      - op: replace
        path: /spec/topics
        value: ["${var.kafka_names.chunk_topic}"]
      - op: replace
        path: /spec/consumerGroup
        value: "${var.kafka_names.worker_group}"
    YAML
  }

  patches {
    target {
      group = "sources.knative.dev"
      kind  = "KafkaSource"
      name  = "batch-intake-source"
    }
    patch = <<-YAML
      - op: replace
        path: /spec/topics
        value: ["${var.kafka_names.request_topic}"]
      - op: replace
        path: /spec/consumerGroup
        value: "${var.kafka_names.intake_group}"
    YAML
  }

  config_map_generator {
    name     = "kinfer-config"
    behavior = "merge"
    literals = [for k, v in merge(local.config, local.llm_config) : "${k}=${v}"]
    options {
      disable_name_suffix_hash = true
    }
  }

  patches {
    target {
      group = "eventing.knative.dev"
      kind  = "KafkaSink"
    }
    patch = jsonencode([{ op = "replace", path = "/spec/bootstrapServers", value = local.brokers }])
  }

  patches {
    target {
      group = "sources.knative.dev"
      kind  = "KafkaSource"
    }
    patch = jsonencode([{ op = "replace", path = "/spec/bootstrapServers", value = local.brokers }])
  }

  patches {
    target {
      group = "gateway.networking.k8s.io"
      kind  = "HTTPRoute"
      name  = "kinfer-public"
    }
    patch = jsonencode([for i, svc in local.route_services : {
      op    = "replace"
      path  = "/spec/rules/${i}/filters/0/urlRewrite/hostname"
      value = "${svc}.${var.namespace}.svc.cluster.local"
    }])
  }

  patches {
    target {
      group = "serving.knative.dev"
      kind  = "Service"
      name  = "triton"
    }
    patch = jsonencode(concat([
      { op = "replace", path = "/spec/template/spec/containers/0/resources/requests/nvidia.com~1gpu", value = tostring(var.gpu_count) },
      { op = "replace", path = "/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu", value = tostring(var.gpu_count) },
      ], length(var.gpu_node_selector) > 0 ? [
      { op = "add", path = "/spec/template/spec/nodeSelector", value = var.gpu_node_selector },
    ] : []))
  }
}

resource "kustomization_resource" "p0" {
  for_each   = data.kustomization_overlay.kinfer.ids_prio[0]
  manifest   = data.kustomization_overlay.kinfer.manifests[each.value]
  depends_on = [kubernetes_secret.kinfer, kubernetes_secret.s3, kubernetes_secret.tls, kubernetes_secret.hf_token]
}

resource "kustomization_resource" "p1" {
  for_each   = data.kustomization_overlay.kinfer.ids_prio[1]
  manifest   = data.kustomization_overlay.kinfer.manifests[each.value]
  depends_on = [kustomization_resource.p0, kustomization_resource.reference_grant, kubernetes_job_v1.migrate]
}

# The S3 API of the in-cluster MinIO on https://s3.<domain>, for presigned
# result URLs (S3_PUBLIC_ENDPOINT_URL); the Host header is kept, as SigV4 needs.
resource "kustomization_resource" "minio_reference_grant" {
  count = var.minio_installed ? 1 : 0
  manifest = jsonencode({
    apiVersion = "gateway.networking.k8s.io/v1beta1"
    kind       = "ReferenceGrant"
    metadata   = { name = "kinfer-s3-${var.namespace}", namespace = var.data_namespace }
    spec = {
      from = [{ group = "gateway.networking.k8s.io", kind = "HTTPRoute", namespace = var.namespace }]
      to   = [{ group = "", kind = "Service", name = "minio" }]
    }
  })
  depends_on = [terraform_data.prerequisites]
}

resource "kustomization_resource" "minio_route" {
  count = var.minio_installed ? 1 : 0
  # Only presigned transfers of batch objects: GET and PUT of an object key (never a bucket
  # listing: the path must go past "<bucket>/") in the two batch buckets, with a SigV4
  # query signature (X-Amz-Signature present: presigned URLs only, no header-signed
  # calls with a leaked key); MinIO's admin API (/minio/admin/...), its console, the model
  # bucket and everything else match no rule (404 at the Gateway). Presigned transfers can
  # be large: no 15 s cut (Envoy Gateway's default). The Host header is kept (SigV4 signs
  # it). tests/deploy/test_s3_route.py renders this heredoc.
  manifest = jsonencode(yamldecode(<<-YAML
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata:
      name: kinfer-s3
      namespace: "${var.namespace}"
      labels:
        app.kubernetes.io/part-of: kinfer
    spec:
      parentRefs:
        - name: kinfer
          sectionName: https
      hostnames:
        - "${local.s3_host}"
      rules:
        - matches:
            - path:
                type: RegularExpression
                value: "/${var.results_bucket}/[^?]+"
              method: GET
              queryParams:
                - type: RegularExpression
                  name: X-Amz-Signature
                  value: "[0-9a-f]{64}"
            - path:
                type: RegularExpression
                value: "/${var.input_bucket}/[^?]+"
              method: PUT
              queryParams:
                - type: RegularExpression
                  name: X-Amz-Signature
                  value: "[0-9a-f]{64}"
          backendRefs:
            - name: minio
              namespace: "${var.data_namespace}"
              port: 9000
          timeouts:
            request: 3600s
  YAML
  ))
  depends_on = [kustomization_resource.p1, kustomization_resource.minio_reference_grant]
}

# External endpoints (database_url, redis_url, s3_endpoint_url, kafka_bootstrap_servers,
# a cloud identity's token endpoint) are outside the cluster: the functions' default-deny
# lets them out only to external_egress_cidrs on external_egress_ports.
resource "kubernetes_network_policy_v1" "external" {
  count = var.external_endpoints || local.workload_identity ? 1 : 0
  metadata {
    name      = "kinfer-external-egress"
    namespace = kubernetes_namespace.kinfer.metadata[0].name
    labels    = { "app.kubernetes.io/part-of" = "kinfer" }
  }
  spec {
    pod_selector {}
    policy_types = ["Egress"]
    egress {
      dynamic "to" {
        for_each = var.external_egress_cidrs
        content {
          ip_block {
            cidr = to.value
          }
        }
      }
      dynamic "ports" {
        for_each = concat(var.external_egress_ports, local.workload_identity ? [80, 988] : [])
        content {
          protocol = "TCP"
          port     = tostring(ports.value)
        }
      }
    }
  }
}

resource "kustomization_resource" "p2" {
  for_each   = data.kustomization_overlay.kinfer.ids_prio[2]
  manifest   = data.kustomization_overlay.kinfer.manifests[each.value]
  depends_on = [kustomization_resource.p1]
}

# With EVENT_AUTH=oidc (the prod overlay) batch-intake, batch-worker and batch-deadletter read the
# service-account issuer's JWKS from the API server (EVENT_OIDC_JWKS_URL): egress to the addresses
# and port of the default/kubernetes Endpoints, which differ per cluster (no pod selector names them).
data "kubernetes_endpoints_v1" "apiserver" {
  metadata {
    name      = "kubernetes"
    namespace = "default"
  }
}

locals {
  apiserver_ips   = flatten([for s in data.kubernetes_endpoints_v1.apiserver.subset : [for a in s.address : a.ip]])
  apiserver_ports = distinct(flatten([for s in data.kubernetes_endpoints_v1.apiserver.subset : [for p in s.port : p.port]]))
}

resource "kubernetes_network_policy_v1" "event_oidc" {
  count = var.overlay == "prod" ? 1 : 0
  metadata {
    name      = "kinfer-event-oidc-egress"
    namespace = kubernetes_namespace.kinfer.metadata[0].name
    labels    = { "app.kubernetes.io/part-of" = "kinfer" }
  }
  spec {
    pod_selector {
      match_expressions {
        key      = "serving.knative.dev/service"
        operator = "In"
        values   = ["batch-intake", "batch-worker", "batch-deadletter"]
      }
    }
    policy_types = ["Egress"]
    egress {
      dynamic "to" {
        for_each = local.apiserver_ips
        content {
          ip_block {
            cidr = "${to.value}/${length(split(":", to.value)) > 1 ? 128 : 32}"
          }
        }
      }
      dynamic "ports" {
        for_each = local.apiserver_ports
        content {
          protocol = "TCP"
          port     = tostring(ports.value)
        }
      }
    }
  }
}
