variable "knative_versions" {
  description = "Knative release of each component: the tag knative-v<version> of knative/serving (serving), knative-extensions/net-kourier (kourier), knative/eventing (eventing) and knative-extensions/eventing-kafka-broker (eventing_kafka). Patch releases are per repository; Serving and Kourier share a minor, as do Eventing and its Kafka extensions."
  type = object({
    serving        = string
    kourier        = string
    eventing       = string
    eventing_kafka = string
  })

  validation {
    condition = (
      alltrue([for v in values(var.knative_versions) : can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", v))])
      && try(regex("^[0-9]+\\.[0-9]+\\.", var.knative_versions.serving) == regex("^[0-9]+\\.[0-9]+\\.", var.knative_versions.kourier), false)
      && try(regex("^[0-9]+\\.[0-9]+\\.", var.knative_versions.eventing) == regex("^[0-9]+\\.[0-9]+\\.", var.knative_versions.eventing_kafka), false)
    )
    error_message = "knative_versions: each an exact X.Y.Z; kourier on serving's minor, eventing_kafka on eventing's minor."
  }
}

variable "domain" {
  description = "Domain of public Knative routes (config-domain)."
  type        = string
}

variable "envoy_gateway_version" {
  description = "Envoy Gateway chart version: the Gateway API implementation behind the public routes."
  type        = string
  default     = "v1.9.0"
}

variable "functions_namespace" {
  description = "Namespace of the Kinfer functions: the only one, besides the public Gateway's and eventing's, that Kourier's internal ingress and the KafkaSink receiver admit (knative/system NetworkPolicies)."
  type        = string
  default     = "kinfer"
}
