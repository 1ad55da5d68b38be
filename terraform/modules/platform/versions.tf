terraform {
  required_providers {
    kubernetes = {
      source = "hashicorp/kubernetes"
    }
    kustomization = {
      source = "kbst/kustomization"
    }
    tls = {
      source = "hashicorp/tls"
    }
  }
}
