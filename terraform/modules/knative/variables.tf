variable "knative_version" {
  description = "Knative release of Serving, Eventing, Kourier and eventing-kafka-broker (e.g. 1.16.0)."
  type        = string
}

variable "domain" {
  description = "Domain of public Knative routes (config-domain)."
  type        = string
}

variable "envoy_gateway_version" {
  description = "Envoy Gateway chart version: the Gateway API implementation behind the public routes."
  type        = string
  default     = "v1.2.6"
}
