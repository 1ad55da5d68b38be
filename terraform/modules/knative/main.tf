# Knative Serving (with Kourier as its ingress), Knative Eventing and the Kafka
# extensions (KafkaSource, KafkaSink), from the pinned release manifests; and
# Envoy Gateway, which serves the Gateway API routes of knative/base/routing.yaml.
#
# Each data source below must render on its own with kustomize, which refuses
# a resource id listed twice, and no two of them may hold the same id (two
# kustomization_resource would fight over one object). Hence:
# - serving-core.yaml already holds every CRD of serving-crds.yaml (and
#   eventing-core.yaml those of eventing-crds.yaml): the *-crds.yaml files are
#   not listed (knative/serving#12760, #14242);
# - eventing-kafka is its own overlay: up to 1.16 its controller file repeated
#   eventing-core's knative-eventing/config-tracing (dropped by a patch here);
#   eventing-kafka-broker removed its copy in knative-v1.19.0 (#4373).
# tests/deploy/test_composition.py renders these overlays offline from
# the release files in tests/fixtures/releases/.
#
# Patches are YAML heredocs (not yamlencode) so that the test can render them.

locals {
  serving_release  = "https://github.com/knative/serving/releases/download/knative-v${var.knative_versions.serving}"
  kourier_release  = "https://github.com/knative-extensions/net-kourier/releases/download/knative-v${var.knative_versions.kourier}"
  eventing_release = "https://github.com/knative/eventing/releases/download/knative-v${var.knative_versions.eventing}"
  kafka_release    = "https://github.com/knative-extensions/eventing-kafka-broker/releases/download/knative-v${var.knative_versions.eventing_kafka}"
}

data "kustomization_overlay" "serving" {
  resources = [
    "${local.serving_release}/serving-core.yaml",
    "${local.kourier_release}/kourier.yaml",
  ]

  patches {
    target {
      kind      = "ConfigMap"
      name      = "config-network"
      namespace = "knative-serving"
    }
    patch = <<-YAML
      apiVersion: v1
      kind: ConfigMap
      metadata:
        name: config-network
        namespace: knative-serving
      data:
        ingress-class: kourier.ingress.networking.knative.dev
    YAML
  }

  patches {
    target {
      kind      = "ConfigMap"
      name      = "config-domain"
      namespace = "knative-serving"
    }
    patch = <<-YAML
      apiVersion: v1
      kind: ConfigMap
      metadata:
        name: config-domain
        namespace: knative-serving
      data:
        "${var.domain}": ""
    YAML
  }

  # Scale-to-zero knobs that hold for every Service (docs/operations.md).
  patches {
    target {
      kind      = "ConfigMap"
      name      = "config-autoscaler"
      namespace = "knative-serving"
    }
    patch = <<-YAML
      apiVersion: v1
      kind: ConfigMap
      metadata:
        name: config-autoscaler
        namespace: knative-serving
      data:
        enable-scale-to-zero: "true"
        scale-to-zero-grace-period: 30s
        stable-window: 60s
    YAML
  }

  # Triton runs on tainted GPU node pools: Knative rejects tolerations, node
  # selectors and affinity in a Service unless these features are enabled.
  # multi-container-probing: the model agent beside Triton has its own readiness
  # probe (a replica is ready once every version it serves is loaded).
  patches {
    target {
      kind      = "ConfigMap"
      name      = "config-features"
      namespace = "knative-serving"
    }
    patch = <<-YAML
      apiVersion: v1
      kind: ConfigMap
      metadata:
        name: config-features
        namespace: knative-serving
      data:
        kubernetes.podspec-tolerations: enabled
        kubernetes.podspec-nodeselector: enabled
        kubernetes.podspec-affinity: enabled
        multi-container-probing: enabled
    YAML
  }

  # The kinfer Gateway is the only public entry: Kourier's own gateway gets no
  # external load balancer (every Kinfer Service is cluster-local anyway).
  patches {
    target {
      kind      = "Service"
      name      = "kourier"
      namespace = "kourier-system"
    }
    patch = <<-YAML
      apiVersion: v1
      kind: Service
      metadata:
        name: kourier
        namespace: kourier-system
      spec:
        type: ClusterIP
    YAML
  }
}

data "kustomization_overlay" "eventing" {
  # Knative Eventing's authentication-oidc (config/core/configmaps/features.yaml at knative-v1.22.2,
  # "disabled" by default): every source sends its sink an OIDC token of its own service account
  # (Authorization: Bearer, audience = the sink's), which the event functions verify
  # (EVENT_AUTH=oidc, shared/access/eventauth.py).
  patches {
    target {
      kind      = "ConfigMap"
      name      = "config-features"
      namespace = "knative-eventing"
    }
    patch = <<-YAML
      apiVersion: v1
      kind: ConfigMap
      metadata:
        name: config-features
        namespace: knative-eventing
      data:
        authentication-oidc: enabled
    YAML
  }
  resources = [
    "${local.eventing_release}/eventing-core.yaml",
  ]
}

data "kustomization_overlay" "eventing_kafka" {
  resources = [
    "${local.kafka_release}/eventing-kafka-controller.yaml",
    "${local.kafka_release}/eventing-kafka-source.yaml",
    "${local.kafka_release}/eventing-kafka-sink.yaml",
  ]
}

# Three passes each: CRDs and namespaces, then everything else (waiting for
# the controllers' and webhooks' Deployments to be ready), then the webhook
# configurations. A webhook registered before its Deployment serves would
# refuse every later resource of its group.
resource "kustomization_resource" "serving_p0" {
  for_each = data.kustomization_overlay.serving.ids_prio[0]
  manifest = data.kustomization_overlay.serving.manifests[each.value]
  timeouts {
    create = "5m"
    update = "5m"
  }
}

resource "kustomization_resource" "serving_p1" {
  for_each = data.kustomization_overlay.serving.ids_prio[1]
  manifest = data.kustomization_overlay.serving.manifests[each.value]
  wait     = true
  timeouts {
    create = "10m"
    update = "10m"
  }
  depends_on = [kustomization_resource.serving_p0]
}

resource "kustomization_resource" "serving_p2" {
  for_each = data.kustomization_overlay.serving.ids_prio[2]
  manifest = data.kustomization_overlay.serving.manifests[each.value]
  timeouts {
    create = "5m"
    update = "5m"
  }
  depends_on = [kustomization_resource.serving_p1]
}

resource "kustomization_resource" "eventing_p0" {
  for_each = data.kustomization_overlay.eventing.ids_prio[0]
  manifest = data.kustomization_overlay.eventing.manifests[each.value]
  timeouts {
    create = "5m"
    update = "5m"
  }
  depends_on = [kustomization_resource.serving_p2]
}

resource "kustomization_resource" "eventing_p1" {
  for_each = data.kustomization_overlay.eventing.ids_prio[1]
  manifest = data.kustomization_overlay.eventing.manifests[each.value]
  wait     = true
  timeouts {
    create = "10m"
    update = "10m"
  }
  depends_on = [kustomization_resource.eventing_p0]
}

resource "kustomization_resource" "eventing_p2" {
  for_each = data.kustomization_overlay.eventing.ids_prio[2]
  manifest = data.kustomization_overlay.eventing.manifests[each.value]
  timeouts {
    create = "5m"
    update = "5m"
  }
  depends_on = [kustomization_resource.eventing_p1]
}

resource "kustomization_resource" "eventing_kafka_p0" {
  for_each = data.kustomization_overlay.eventing_kafka.ids_prio[0]
  manifest = data.kustomization_overlay.eventing_kafka.manifests[each.value]
  timeouts {
    create = "5m"
    update = "5m"
  }
  depends_on = [kustomization_resource.eventing_p2]
}

resource "kustomization_resource" "eventing_kafka_p1" {
  for_each = data.kustomization_overlay.eventing_kafka.ids_prio[1]
  manifest = data.kustomization_overlay.eventing_kafka.manifests[each.value]
  wait     = true
  timeouts {
    create = "10m"
    update = "10m"
  }
  depends_on = [kustomization_resource.eventing_kafka_p0]
}

resource "kustomization_resource" "eventing_kafka_p2" {
  for_each = data.kustomization_overlay.eventing_kafka.ids_prio[2]
  manifest = data.kustomization_overlay.eventing_kafka.manifests[each.value]
  timeouts {
    create = "5m"
    update = "5m"
  }
  depends_on = [kustomization_resource.eventing_kafka_p1]
}

# Envoy Gateway installs the Gateway API CRDs and implements them.
resource "helm_release" "envoy_gateway" {
  name             = "envoy-gateway"
  repository       = "oci://docker.io/envoyproxy"
  chart            = "gateway-helm"
  version          = var.envoy_gateway_version
  namespace        = "envoy-gateway-system"
  create_namespace = true
  atomic           = true
  wait             = true
  timeout          = 600
}

resource "kustomization_resource" "gateway_class" {
  manifest = jsonencode({
    apiVersion = "gateway.networking.k8s.io/v1"
    kind       = "GatewayClass"
    metadata   = { name = "kinfer" }
    spec       = { controllerName = "gateway.envoyproxy.io/gatewayclass-controller" }
  })
  depends_on = [helm_release.envoy_gateway]
}
