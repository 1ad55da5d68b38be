# NetworkPolicies of Knative's own namespaces (knative/system): each denies ingress by
# default and admits only what Knative and Kinfer need, so that no pod of another
# namespace reaches Kinfer's Services through Kourier's internal ingress, the activator or
# the KafkaSink receiver. Applied once Serving, Kourier and Eventing are installed (their
# namespaces exist). The YAML heredoc patch is rendered by tests/deploy/test_network.py.
data "kustomization_overlay" "network" {
  resources = [abspath("${path.module}/../../../knative/system")]

  patches {
    target {
      kind = "NetworkPolicy"
      name = "allow-internal-ingress"
    }
    patch = <<-YAML
      - op: test
        path: /spec/ingress/0/from/1/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: kinfer
      - op: replace
        path: /spec/ingress/0/from/1/namespaceSelector/matchLabels/kubernetes.io~1metadata.name
        value: "${var.functions_namespace}"
    YAML
  }

  patches {
    target {
      kind = "NetworkPolicy"
      name = "allow-sink-receiver"
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
}

resource "kustomization_resource" "network" {
  for_each = data.kustomization_overlay.network.ids
  manifest = data.kustomization_overlay.network.manifests[each.value]
  depends_on = [
    kustomization_resource.serving_p2, kustomization_resource.eventing_p2, kustomization_resource.eventing_kafka_p2,
  ]
}
