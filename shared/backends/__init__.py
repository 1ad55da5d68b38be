"""The Triton backends: the gRPC client pool (``triton``), circuit breakers shared through
Redis (``breaker``), the balancer that picks a backend and retries elsewhere (``balancer``),
request metrics (``metrics``), health probing and the ``/health``/``/metrics`` bodies of the
``backends`` function (``monitor``), and uploading a model repository (``repository``).

May import ``shared.clients`` and the root modules; never ``shared.web``, ``shared.inference``
or ``shared.batch`` (they build on this package).
"""
