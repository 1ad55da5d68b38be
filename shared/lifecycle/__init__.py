"""The model lifecycle: a model file in, a served, versioned model out.

- ``tritonconfig``: Triton's ``config.pbtxt`` parsed, normalised and compared (one config per Triton model);
- ``onnxgraph``: a ``config.pbtxt`` written from an ONNX graph (users never write one) and the push options;
- ``options``: the push options (``triton_config``: max_batch_size, dynamic batching, instances, device);
- ``packages``: a ``.tar.gz`` Triton model directory checked and unpacked safely;
- ``repository``: the S3 model repository layout, ``<prefix>/<triton_model>/<n>/...``;
- ``artifacts``: registering a version from an upload or an ``s3://`` object, nothing half-registered;
- ``install``: a checked artifact placed by its config (a Triton model per config), its files and row,
  Triton version numbers;
- ``aliases``: named, weighted pointers to versions (canary, promote, rollback), kept to one signature;
- ``replicas``: per-replica readiness heartbeats of the model agents (Redis, TTL);
- ``agent``: the model agent beside each Triton (explicit model control through its repository API,
  ``tritonapi``);
- ``backends``: ``backend_url`` checks (allow-list, Triton answers, model served);
- ``metrics``: per-version request counters and latencies;
- ``versions``: a version's state per replica, and deleting it with its files;
- ``onnx_runner``: the Python-backend ``model.py`` that serves an ONNX file on the local Triton.

The registry (``shared.registry``) stays the one reader of the ``models`` rows that the data
plane resolves; this package sits above it.
"""
