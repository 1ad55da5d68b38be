"""The data plane of real-time inference: resolve a model through the registry, pick a
backend, run the rows (``dataplane``); the KServe Open Inference Protocol v2 (``v2``); and the
codec between request JSON and Triton tensors (``codec``).

Protocol-independent: handlers take plain values (a parsed body, a name and version) and
return plain values, never a request or response object. May import ``shared.backends``,
``shared.registry``, ``shared.clients`` and the root modules; never ``shared.web`` or
``shared.batch``.
"""
