# `terraform apply -var image=... -var domain=...` brings up, in order: Knative
# (Serving + Kourier, Eventing, the Kafka extensions) and the public gateway,
# Kafka, the data services, then the Kinfer platform rendered from knative/.

# The Kafka names of this install: every topic and consumer group starts with
# install_name, so that two installs on one Kafka share none (a consumer group
# shared by two installs would split each one's partitions between them).
# knative/components/install-name does the same for the kustomize overlays.
locals {
  kafka_names = {
    chunk_topic   = "${var.install_name}.batch.chunks"
    request_topic = "${var.install_name}.batch.requests"
    worker_group  = "${var.install_name}-batch-worker"
    intake_group  = "${var.install_name}-batch-intake"
  }
}

module "knative" {
  source              = "./modules/knative"
  knative_versions    = var.knative_versions
  domain              = var.domain
  functions_namespace = var.namespace
}

module "kafka" {
  source            = "./modules/kafka"
  bootstrap_servers = var.kafka_bootstrap_servers
  chunk_partitions  = coalesce(var.kafka_chunk_partitions, var.overlay == "prod" ? 24 : 12)
  topics            = { chunks = local.kafka_names.chunk_topic, requests = local.kafka_names.request_topic }
  groups            = { worker = local.kafka_names.worker_group, intake = local.kafka_names.intake_group }
  data_namespace    = var.data_namespace
  sasl_username     = var.kafka_sasl_username
  sasl_password     = var.kafka_sasl_password
  ca_certificate    = var.kafka_ca_certificate
}

module "data" {
  source               = "./modules/data"
  namespace            = var.data_namespace
  database_url         = var.database_url
  redis_url            = var.redis_url
  s3_endpoint_url      = var.s3_endpoint_url
  s3_region            = var.s3_region
  s3_access_key_id     = var.s3_access_key_id
  s3_secret_access_key = var.s3_secret_access_key
  kafka_brokers        = module.kafka.bootstrap_servers
  kafka_credentials    = module.kafka.credentials["minio"]
  kafka_ca_certificate = module.kafka.ca_certificate
  batch_request_topic  = local.kafka_names.request_topic
  functions_namespace  = var.namespace
  kafka_namespace      = "kafka"
  s3_workload_identity = length(var.s3_workload_identity_annotations) > 0
}

# No module-level depends_on here: it would defer the platform's
# kustomization_overlay data source to apply time, and the for_each over its ids
# could not be planned ("Invalid for_each argument", hashicorp/terraform#28131).
# The platform orders its own resources after the other modules' `ready` outputs.
module "platform" {
  source = "./modules/platform"
  prerequisites = {
    knative = module.knative.ready
    kafka   = module.kafka.ready
    data    = module.data.ready
  }
  image                  = var.image
  agent_image            = var.agent_image
  kafka_names            = local.kafka_names
  namespace              = var.namespace
  service_account_issuer = var.service_account_issuer
  domain                 = var.domain
  overlay                = var.overlay
  gpu_count              = var.gpu_count
  gpu_node_selector      = var.gpu_node_selector
  triton_keep_warm       = var.triton_keep_warm
  llm_backend            = var.llm_backend
  hf_token               = var.hf_token
  kafka_brokers          = module.kafka.bootstrap_servers
  kafka_credentials      = module.kafka.credentials
  kafka_ca_certificate   = module.kafka.ca_certificate
  database_url           = module.data.database_url
  redis_url              = module.data.redis_url
  s3_endpoint_url        = module.data.s3_endpoint_url
  s3_region              = var.s3_region
  s3_workloads           = module.data.s3_workloads
  s3_credentials         = module.data.s3_credentials
  s3_public_endpoint_url = var.s3_public_endpoint_url
  minio_installed        = module.data.minio_installed
  data_namespace         = var.data_namespace
  tls_certificate        = var.tls_certificate
  tls_private_key        = var.tls_private_key
  input_bucket           = module.data.input_bucket
  results_bucket         = module.data.results_bucket

  s3_workload_identity_annotations = var.s3_workload_identity_annotations
  external_egress_cidrs            = var.external_egress_cidrs
  external_egress_ports            = var.external_egress_ports
  external_endpoints               = var.database_url != "" || var.redis_url != "" || var.s3_endpoint_url != "" || var.kafka_bootstrap_servers != ""
}
