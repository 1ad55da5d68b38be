"""The local stand-in for KafkaSink + KafkaSource: accept CloudEvents over HTTP into Redis
Streams (``server``), deliver them with the Knative delivery spec's retries, backoff and
dead-letter sink (``delivery``), wired from the ``knative/`` manifests (``wiring``), plus the
PingSource ticker (``ping``).
"""
