"""HTTP and CloudEvents plumbing: the request dispatcher with routing, auth hook, body
limits and JSON errors (``http``), CloudEvents in (``events``: parse, trace, run, answer),
per-process start-up of a function (``runtime``) and hosting (``server``, which serves the
entry points it is handed and never names them).

The top of the library: it may import every domain package; nothing but ``functions/``,
``shared.cli`` and ``shared.localstack`` imports it.
"""
