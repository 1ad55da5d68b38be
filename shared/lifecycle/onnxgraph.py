"""A Triton ``config.pbtxt`` written from an ONNX graph, so users never write one.

Input and output names, data types and dims come from the graph (initializers are not
inputs). When every input and output has a dynamic first dimension, that dimension is
the batch: ``max_batch_size`` (ONNX_MAX_BATCH_SIZE) and dynamic batching; otherwise the
model is unbatched with its full dims. A push's options (``options``: max_batch_size, 0 for
no batch dimension; dynamic batching and its queue delay; instance count; device) replace
these defaults, and one the graph cannot take is refused naming the tensor. Class names in
the model's metadata (``class_names``, comma-separated, as skl2onnx exports write them)
become the config's ``class_names``, so predictions name classes. ``ONNX_BACKEND`` picks how Triton runs it: its
``onnxruntime_onnx`` platform (production) or the Python backend running onnxruntime
(``onnx_runner.py`` copied as the version's ``model.py``; the local Triton has no other).

Names from the graph are untrusted text: every string goes into the config through ``quote``
(protobuf text-format escaping, so a name with quotes, backslashes or braces stays one string),
and a tensor name Triton and its clients cannot carry (empty, control characters such as a
newline or NUL, over MAX_NAME_CHARS) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.domain import Device, TritonOptions
from shared.errors import InvalidInput
from shared.lifecycle.options import FIELD as OPTIONS
from shared.lifecycle.options import KINDS
from shared.lifecycle.tritonconfig import quote

FIELD = "artifact"
MAX_NAME_CHARS = 256
MODEL_FILE = "model.onnx"
RUNNER_FILE = "model.py"

# ONNX TensorProto element types Kinfer can carry in JSON (numpy dtypes of the codec), as Triton types.
_TRITON_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    triton_type: str
    dims: tuple[int, ...]  # full ONNX dims, -1 where dynamic


def load(path: Path) -> Any:
    """The checked ONNX model at ``path``; InvalidInput saying why it is not a usable one."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise InvalidInput(
            f"the artifact is not an ONNX model (it does not parse: {type(exc).__name__}); "
            "push a .onnx file or a .tar.gz Triton model directory",
            field=FIELD,
        ) from None
    if not model.graph.node or not model.graph.output:
        raise InvalidInput(
            "the artifact is not an ONNX model (no graph nodes or outputs); push a .onnx file "
            "or a .tar.gz Triton model directory",
            field=FIELD,
        )
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise InvalidInput(
            "ONNX models with external data files are not supported as one file; push a .tar.gz "
            "Triton model directory holding the .onnx file and its data",
            field=FIELD,
        )
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"the ONNX model is corrupt or invalid: {first[:300]}", field=FIELD) from None
    return model


def tensors(model: Any) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of the graph; InvalidInput for a tensor Kinfer cannot serve."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_tensor(v, "input") for v in model.graph.input if v.name not in initializers]
    outputs = [_tensor(v, "output") for v in model.graph.output]
    if not inputs:
        raise InvalidInput("the ONNX graph has no inputs", field=FIELD)
    return inputs, outputs


def _check_name(name: str, role: str) -> None:
    """InvalidInput for a tensor name that cannot travel as a Triton tensor name (and in JSON, headers, logs)."""
    import unicodedata

    if not name:
        raise InvalidInput(f"an {role} of the ONNX graph has an empty name", field=FIELD)
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(
            f"{role} {name[:40]!r}... has a name of {len(name)} characters; at most {MAX_NAME_CHARS} are accepted",
            field=FIELD,
        )
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise InvalidInput(
            f"{role} {name[:80]!r} has a control character (newline, NUL, ...) in its name; rename the tensor",
            field=FIELD,
        )


def _tensor(value: Any, role: str) -> Tensor:
    import onnx

    _check_name(value.name, role)
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise InvalidInput(
            f"{role} {value.name!r} is a {kind or 'untyped value'}, not a tensor: Kinfer serves "
            "tensor inputs and outputs only",
            field=FIELD,
        )
    elem = value.type.tensor_type.elem_type
    if elem not in _TRITON_TYPES:
        name = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else str(elem)
        supported = ", ".join(sorted(t.removeprefix("TYPE_") for t in _TRITON_TYPES.values()))
        raise InvalidInput(
            f"{role} {value.name!r} has the unsupported tensor type {name}; supported: {supported}", field=FIELD
        )
    if not value.type.tensor_type.HasField("shape"):
        raise InvalidInput(f"{role} {value.name!r} has no shape (unknown rank)", field=FIELD)
    dims = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in value.type.tensor_type.shape.dim
    )
    return Tensor(value.name, _TRITON_TYPES[elem], dims)


def config_text(
    model: Any, triton_model: str, backend: str, max_batch_size: int, options: TritonOptions | None = None
) -> str:
    """The ``config.pbtxt`` for ``model`` served as ``triton_model`` by ``backend`` (onnxruntime | python),
    with the push ``options`` (``shared.lifecycle.options``; left out: the defaults)."""
    inputs, outputs = tensors(model)
    opts: TritonOptions = options or {}
    batched = _batched(inputs, outputs, opts)
    dynamic = opts.get("dynamic_batching", batched)
    if dynamic and not batched:
        raise InvalidInput(
            f"{OPTIONS}.dynamic_batching needs a batch dimension, and this model has none "
            f"({_unbatchable(inputs, outputs) or 'max_batch_size is 0'})",
            field=f"{OPTIONS}.dynamic_batching",
        )
    if "max_queue_delay_us" in opts and not dynamic:
        raise InvalidInput(
            f"{OPTIONS}.max_queue_delay_us is a setting of dynamic batching, which is off for this model",
            field=f"{OPTIONS}.max_queue_delay_us",
        )
    lines = [f"name: {quote(triton_model)}"]
    if backend == "python":
        lines.append('backend: "python"')
    else:
        lines += ['platform: "onnxruntime_onnx"', f'default_model_filename: "{MODEL_FILE}"']
    lines.append(f"max_batch_size: {(opts.get('max_batch_size') or max_batch_size) if batched else 0}")
    lines.append("input [\n" + ",\n".join(_entry(t, batched) for t in inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_entry(t, batched) for t in outputs) + "\n]")
    labels = {p.key: p.value for p in model.metadata_props}.get("class_names", "").replace('"', "")
    if labels:  # the data plane names each row's class with them
        lines.append(f'parameters [ {{ key: "class_names" value: {{ string_value: {quote(labels[:4000])} }} }} ]')
    if dynamic:
        delay = opts.get("max_queue_delay_us")
        lines.append(
            "dynamic_batching { }" if delay is None else f"dynamic_batching {{ max_queue_delay_microseconds: {delay} }}"
        )
    group = _instance_group(backend, opts)
    if group:
        lines.append(group)
    return "\n".join(lines) + "\n"


def _batched(inputs: list[Tensor], outputs: list[Tensor], options: TritonOptions) -> bool:
    """Whether the config has a batch dimension: every tensor's first dimension is dynamic, unless the push
    asked for max_batch_size 0; a max_batch_size asked of a model without one is refused."""
    reason = _unbatchable(inputs, outputs)
    wanted = options.get("max_batch_size")
    if wanted and reason:
        raise InvalidInput(
            f"{OPTIONS}.max_batch_size {wanted} needs a batch dimension (a dynamic first dimension on every "
            f"input and output), and {reason}; push it with max_batch_size 0 or leave max_batch_size out",
            field=f"{OPTIONS}.max_batch_size",
        )
    return not reason and wanted != 0


def _unbatchable(inputs: list[Tensor], outputs: list[Tensor]) -> str:
    """Why the tensors have no batch dimension ("" when they have one)."""
    for role, group in (("input", inputs), ("output", outputs)):
        for t in group:
            if not t.dims or t.dims[0] != -1:
                return f"{role} {t.name[:80]!r} has the fixed shape {list(t.dims)}"
    return ""


def _instance_group(backend: str, options: TritonOptions) -> str:
    """The instance group: what the push asked for; by default one CPU instance for the Python backend (one
    onnxruntime session each) and Triton's own choice for onnxruntime."""
    kind = (
        KINDS.get(Device(options["device"])) if "device" in options else ("KIND_CPU" if backend == "python" else None)
    )
    if kind is None and "instances" not in options:
        return ""
    fields = ([f"kind: {kind}"] if kind else []) + [f"count: {options.get('instances', 1)}"]
    return f"instance_group [ {{ {' '.join(fields)} }} ]"


def _entry(tensor: Tensor, batched: bool) -> str:
    dims = tensor.dims[1:] if batched else tensor.dims
    # Triton needs at least one dim: a scalar per row travels as [1] and is reshaped to [] for the model.
    shape = f"dims: [ {', '.join(map(str, dims))} ]" if dims else "dims: [ 1 ] reshape: { shape: [ ] }"
    return f"  {{ name: {quote(tensor.name)} data_type: {tensor.triton_type} {shape} }}"


def runner_source() -> bytes:
    """The Python-backend ``model.py`` that runs a version's ``model.onnx`` with onnxruntime."""
    from importlib.resources import files

    return (files("shared.lifecycle") / "onnx_runner.py").read_bytes()
