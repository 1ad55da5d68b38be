terraform {
  required_version = ">= 1.5.0"

  # State holds every generated password, the Kafka and Triton keys and the TLS key (marked
  # sensitive, which hides them from plan output, not from the state file). Local state is
  # for trying Kinfer; in production keep it in an encrypted, access-controlled, locked
  # remote backend (docs/operations.md, "Terraform state"). Uncomment one, then
  # `terraform init -migrate-state`:
  #
  # backend "s3" {
  #   bucket       = "acme-kinfer-tfstate"       # versioned, public access blocked
  #   key          = "kinfer/prod.tfstate"
  #   region       = "eu-west-1"
  #   encrypt      = true                        # server-side encryption
  #   kms_key_id   = "arn:aws:kms:eu-west-1:111122223333:key/..."
  #   use_lockfile = true                        # S3-native locking (Terraform >= 1.10)
  # }
  #
  # backend "gcs" {
  #   bucket             = "acme-kinfer-tfstate" # encrypted at rest; versioning on
  #   prefix             = "kinfer/prod"
  #   kms_encryption_key = "projects/.../locations/.../keyRings/.../cryptoKeys/..."
  # }

  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.35"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 2.17"
    }
    # Renders knative/ and the pinned release manifests with kustomize and
    # applies them in dependency order (CRDs and namespaces first).
    kustomization = {
      source  = "kbst/kustomization"
      version = "~> 0.9"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }
}
