# The model agent beside Triton (`kinfer agent`) runs its own image, not the
# functions': a new image of the Triton Service makes a new revision, and a new
# revision starts a replica, a GPU, even while Triton is scaled to zero. Unless
# agent_image pins one, the agent's image is <image's repository>-agent tagged with
# the agent's version (knative/agent-version.json), which moves only when the
# agent's own code does (tests/deploy/test_agent_image.py hashes it); so
# registry.example.com/kinfer:0.2.0 runs its agent from registry.example.com/kinfer-agent:1.0,
# which scripts/push-images pushes once per agent version.
locals {
  agent_version    = jsondecode(file("${local.knative_dir}/agent-version.json")).agent_version
  image_repository = regex("^(.+?)(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?(?:@sha256:[0-9a-f]{64})?$", var.image)[0]
  agent_image      = var.agent_image != "" ? var.agent_image : "${local.image_repository}-agent:${local.agent_version}"
}
