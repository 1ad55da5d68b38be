"""Push options: what a push may say about the ``config.pbtxt`` Kinfer writes for an ONNX file.

``triton_config`` of ``POST /v1/models`` (``kinfer models push --max-batch-size ...``):
``max_batch_size`` (0: no batch dimension, the tensors keep their full shapes), ``dynamic_batching``
(on by default when the model is batched) with ``max_queue_delay_us``, ``instances`` (the instance
group's count) and ``device`` (``cpu`` or ``gpu``: KIND_CPU, KIND_GPU). Each is bounded here, with an
error naming its field; whether the graph allows it (a batch dimension needs a dynamic first dimension on
every tensor) is checked when the file is read (``onnxgraph``). The options are stored on the version's
row and are part of its config: a version pushed with other options than the Triton model's live versions
gets a Triton model of its own (``install``).
"""

from __future__ import annotations

from shared.domain import Device, TritonOptions
from shared.errors import InvalidInput

FIELD = "triton_config"
MAX_BATCH_SIZE = 65536  # as ONNX_MAX_BATCH_SIZE
MAX_QUEUE_DELAY_US = 10_000_000  # 10 s: longer than any real-time caller waits
MAX_INSTANCES = 64
KEYS = ("max_batch_size", "dynamic_batching", "max_queue_delay_us", "instances", "device")
KINDS = {Device.CPU: "KIND_CPU", Device.GPU: "KIND_GPU"}


def parse(raw: object) -> TritonOptions | None:
    """The checked options of a push body's ``triton_config`` (None or ``{}``: the defaults)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{FIELD} must be an object with some of: {', '.join(KEYS)}", field=FIELD)
    for key in raw:
        if key not in KEYS:
            raise InvalidInput(
                f"unknown field {str(key)[:64]!r} in {FIELD}; allowed: {', '.join(KEYS)}", field=f"{FIELD}.{key}"
            )
    options: TritonOptions = {}
    if "max_batch_size" in raw:
        options["max_batch_size"] = _int(raw["max_batch_size"], "max_batch_size", 0, MAX_BATCH_SIZE)
    if "dynamic_batching" in raw:
        if not isinstance(raw["dynamic_batching"], bool):
            raise InvalidInput(f"{FIELD}.dynamic_batching must be true or false", field=f"{FIELD}.dynamic_batching")
        options["dynamic_batching"] = raw["dynamic_batching"]
    if "max_queue_delay_us" in raw:
        options["max_queue_delay_us"] = _int(raw["max_queue_delay_us"], "max_queue_delay_us", 0, MAX_QUEUE_DELAY_US)
    if "instances" in raw:
        options["instances"] = _int(raw["instances"], "instances", 1, MAX_INSTANCES)
    if "device" in raw:
        device = raw["device"]
        if device not in tuple(Device):
            raise InvalidInput(f"{FIELD}.device must be one of: cpu, gpu", field=f"{FIELD}.device")
        options["device"] = str(device)
    _consistent(options)
    return options or None


def _int(raw: object, key: str, lo: int, hi: int) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not lo <= raw <= hi:
        raise InvalidInput(f"{FIELD}.{key} must be an integer from {lo} to {hi}", field=f"{FIELD}.{key}")
    return raw


def _consistent(options: TritonOptions) -> None:
    """Combinations Triton refuses: dynamic batching without a batch dimension, a queue delay without it."""
    unbatched = options.get("max_batch_size") == 0
    if unbatched and options.get("dynamic_batching"):
        raise InvalidInput(
            f"{FIELD}.dynamic_batching needs a batch dimension: it cannot go with max_batch_size 0",
            field=f"{FIELD}.dynamic_batching",
        )
    if "max_queue_delay_us" in options and (unbatched or options.get("dynamic_batching") is False):
        raise InvalidInput(
            f"{FIELD}.max_queue_delay_us is a setting of dynamic batching, which is off here "
            "(max_batch_size 0 or dynamic_batching false)",
            field=f"{FIELD}.max_queue_delay_us",
        )
