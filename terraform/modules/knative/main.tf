# Knative Serving (with Kourier as its ingress), Knative Eventing and the Kafka
# extensions (KafkaSource, KafkaSink), from the pinned release manifests; and
# Envoy Gateway, which serves the Gateway API routes of knative/base/routing.yaml.

locals {
  serving_release  = "https://github.com/knative/serving/releases/download/knative-v${var.knative_version}"
  kourier_release  = "https://github.com/knative-extensions/net-kourier/releases/download/knative-v${var.knative_version}"
  eventing_release = "https://github.com/knative/eventing/releases/download/knative-v${var.knative_version}"
  kafka_release    = "https://github.com/knative-extensions/eventing-kafka-broker/releases/download/knative-v${var.knative_version}"
}

data "kustomization_overlay" "serving" {
  resources = [
    "${local.serving_release}/serving-crds.yaml",
    "${local.serving_release}/serving-core.yaml",
    "${local.kourier_release}/kourier.yaml",
  ]

  patches {
    target {
      kind      = "ConfigMap"
      name      = "config-network"
      namespace = "knative-serving"
    }
    patch = yamlencode({
      apiVersion = "v1"
      kind       = "ConfigMap"
      metadata   = { name = "config-network", namespace = "knative-serving" }
      data       = { "ingress-class" = "kourier.ingress.networking.knative.dev" }
    })
  }

  patches {
    target {
      kind      = "ConfigMap"
      name      = "config-domain"
      namespace = "knative-serving"
    }
    patch = yamlencode({
      apiVersion = "v1"
      kind       = "ConfigMap"
      metadata   = { name = "config-domain", namespace = "knative-serving" }
      data       = { (var.domain) = "" }
    })
  }

  # Scale-to-zero knobs that hold for every Service (docs/operations.md).
  patches {
    target {
      kind      = "ConfigMap"
      name      = "config-autoscaler"
      namespace = "knative-serving"
    }
    patch = yamlencode({
      apiVersion = "v1"
      kind       = "ConfigMap"
      metadata   = { name = "config-autoscaler", namespace = "knative-serving" }
      data = {
        "enable-scale-to-zero"       = "true"
        "scale-to-zero-grace-period" = "30s"
        "stable-window"              = "60s"
      }
    })
  }
}

data "kustomization_overlay" "eventing" {
  resources = [
    "${local.eventing_release}/eventing-crds.yaml",
    "${local.eventing_release}/eventing-core.yaml",
    "${local.kafka_release}/eventing-kafka-controller.yaml",
    "${local.kafka_release}/eventing-kafka-source.yaml",
    "${local.kafka_release}/eventing-kafka-sink.yaml",
  ]
}

# Three passes each: CRDs and namespaces, then everything else, then webhooks.
resource "kustomization_resource" "serving_p0" {
  for_each = data.kustomization_overlay.serving.ids_prio[0]
  manifest = data.kustomization_overlay.serving.manifests[each.value]
}

resource "kustomization_resource" "serving_p1" {
  for_each   = data.kustomization_overlay.serving.ids_prio[1]
  manifest   = data.kustomization_overlay.serving.manifests[each.value]
  depends_on = [kustomization_resource.serving_p0]
}

resource "kustomization_resource" "serving_p2" {
  for_each   = data.kustomization_overlay.serving.ids_prio[2]
  manifest   = data.kustomization_overlay.serving.manifests[each.value]
  depends_on = [kustomization_resource.serving_p1]
}

resource "kustomization_resource" "eventing_p0" {
  for_each   = data.kustomization_overlay.eventing.ids_prio[0]
  manifest   = data.kustomization_overlay.eventing.manifests[each.value]
  depends_on = [kustomization_resource.serving_p2]
}

resource "kustomization_resource" "eventing_p1" {
  for_each   = data.kustomization_overlay.eventing.ids_prio[1]
  manifest   = data.kustomization_overlay.eventing.manifests[each.value]
  depends_on = [kustomization_resource.eventing_p0]
}

resource "kustomization_resource" "eventing_p2" {
  for_each   = data.kustomization_overlay.eventing.ids_prio[2]
  manifest   = data.kustomization_overlay.eventing.manifests[each.value]
  depends_on = [kustomization_resource.eventing_p1]
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
