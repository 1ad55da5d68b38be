terraform {
  required_providers {
    helm = {
      source = "hashicorp/helm"
    }
    kustomization = {
      source = "kbst/kustomization"
    }
  }
}
