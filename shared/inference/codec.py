"""Validate /v1/infer inputs against a model's Triton metadata and shape its answers.

Input forms: ``{"data": [...]}`` (the model's single input) or ``{"<tensor>": [...], ...}``.
For a batched model a value is one row (the tensor's shape) or a batch of rows; so is it for a
``max_batch_size`` 0 model whose every tensor begins with -1 (``ModelInfo.rows_first``: a version pushed
without batching takes the bodies its batched predecessor took); for another ``max_batch_size`` 0 model it
is exactly the tensor's shape. Dynamic dims (-1) take
any size of at least one. Every rejection is an ``InvalidInput`` that says what was
expected (name, dtype, shape).

Strings (``BYTES`` tensors): JSON strings, nested as the tensor's shape, become an object array of their
UTF-8 ``bytes``; each at most ``ModelInfo.max_string_bytes`` (MAX_STRING_BYTES) long, and any element that
is not a string is refused with its index. For a tensor of one string per row (dims ``[1]``) a flat list
of strings is one string per row, and a lone string is one row. In answers a BYTES element is its text
when it is valid UTF-8, else ``{"base64": "<standard base64>"}`` (``text_of``): JSON cannot hold bytes.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.backends.triton import BYTES, MAX_STRING_BYTES, NP_DTYPES, ModelInfo, TensorSpec
from shared.errors import InvalidInput

MAX_ELEMENTS = 1_000_000  # per request when the caller names no limit (the body limit bounds it too)


@dataclass(frozen=True)
class Parsed:
    """Validated input arrays (batched models: leading batch dim), rows, and whether one row was sent."""

    arrays: dict[str, np.ndarray[Any, Any]]
    rows: int
    single: bool

    def shape_key(self) -> tuple[Any, ...]:
        """Items with equal keys can be concatenated into one batched request."""
        return tuple((name, a.shape[1:]) for name, a in sorted(self.arrays.items()))


def parse_input(info: ModelInfo, raw: object, field: str = "input", max_elements: int = MAX_ELEMENTS) -> Parsed:
    """Validate one ``input`` object; InvalidInput naming what was expected otherwise."""
    refuse_streaming(info)
    values = _named_values(info, raw, field)
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    singles: set[bool] = set()
    rows: set[int] = set()
    left = max_elements
    for spec in info.inputs:
        array, single = _tensor(info, spec, values[spec.name], f"{field}.{spec.name}", left)
        left -= array.size
        arrays[spec.name] = array
        singles.add(single)
        rows.add(array.shape[0] if info.rows_first else 1)
    if len(singles) > 1 or len(rows) > 1:
        raise InvalidInput(
            f"{field}: every input tensor needs the same number of rows; expected {info.expected()}", field=field
        )
    return Parsed(arrays, rows.pop(), singles.pop())


def refuse_streaming(info: ModelInfo) -> None:
    """A model that answers as a stream of responses (Triton's decoupled mode: a generative model) has no single
    answer to give here: 400 naming the routes that serve it."""
    if info.decoupled:
        raise InvalidInput(
            f"model {info.name!r} streams its answer (a generative model): call it through POST "
            "/v1/chat/completions or /v1/completions (the OpenAI-compatible API)",
            field="model",
        )


def _named_values(info: ModelInfo, raw: object, field: str) -> dict[str, object]:
    names = [s.name for s in info.inputs]
    if not isinstance(raw, dict) or not raw:
        raise InvalidInput(
            f'{field} is missing or empty; expected an object {{"data": [...]}} or '
            f"{{{', '.join(repr(n) for n in names)}: [...]}} with {info.expected()}",
            field=field,
        )
    if set(raw) == {"data"} and "data" not in names:
        if len(names) != 1:
            raise InvalidInput(
                f"{field}.data works only for single-input models; model {info.name!r} takes {info.expected()}",
                field=f"{field}.data",
            )
        return {names[0]: raw["data"]}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise InvalidInput(
            f"{field} has unknown tensor {unknown[0]!r}; model {info.name!r} takes "
            f'{info.expected()} (or {{"data": [...]}})',
            field=f"{field}.{unknown[0]}",
        )
    missing = [n for n in names if n not in raw]
    if missing:
        raise InvalidInput(
            f"{field} is missing tensor {missing[0]!r}; expected {info.expected()}", field=f"{field}.{missing[0]}"
        )
    return dict(raw)


def _tensor(
    info: ModelInfo, spec: TensorSpec, value: object, field: str, max_elements: int = MAX_ELEMENTS
) -> tuple[np.ndarray[Any, Any], bool]:
    rows_first, shape = info.rows_first, info.row_shape(spec)
    expected = _expected(spec, shape, rows_first)
    array = to_array(value, spec, field, expected, max_elements, info.max_string_bytes)
    if spec.datatype == BYTES and rows_first and shape == (1,) and array.ndim == 1 and array.shape[0] > 1:
        array = array.reshape(-1, 1)  # a flat list of strings: one string per row
    given, rank = list(array.shape), len(shape)
    if rows_first and array.ndim == rank:
        array, single = array[np.newaxis, ...], True
    elif (rows_first and array.ndim == rank + 1) or (not rows_first and array.ndim == rank):
        single = not rows_first
    else:
        raise InvalidInput(f"{field} has shape {given}; {expected}", field=field)
    dims = array.shape[1:] if rows_first else array.shape
    if not dims_match(dims, shape):
        raise InvalidInput(f"{field} has shape {given}; {expected}", field=field)
    return array, single


def same_inputs(a: ModelInfo, b: ModelInfo) -> bool:
    """Whether arrays validated against ``a`` are valid for ``b`` as they are: a shadow version with the
    primary's signature and batching (the same Triton model: the same cached object). A streaming model never
    is: only the OpenAI routes may call one."""
    if a is b:
        return True
    return (
        a.inputs == b.inputs
        and a.max_batch_size == b.max_batch_size
        and a.rows_first == b.rows_first
        and a.max_string_bytes == b.max_string_bytes
        and not b.decoupled
    )


@functools.lru_cache(maxsize=4096)
def _expected(spec: TensorSpec, shape: tuple[int, ...], rows_first: bool) -> str:
    """The "expected ..." part of a tensor's error messages, made once per tensor rather than on every
    request (2 us of each here)."""
    return f"expected {TensorSpec(spec.name, spec.datatype, shape).describe(rows_first)}"


def dims_match(actual: tuple[int, ...], declared: tuple[int, ...]) -> bool:
    """Declared dims with -1 accept any size of at least one."""
    if len(actual) != len(declared):
        return False
    return all(a >= 1 and (d < 0 or a == d) for a, d in zip(actual, declared, strict=True))


def to_array(
    value: object,
    spec: TensorSpec,
    field: str,
    expected: str,
    max_elements: int = MAX_ELEMENTS,
    max_string_bytes: int = MAX_STRING_BYTES,
) -> np.ndarray[Any, Any]:
    """A JSON value -> numpy array of the tensor's dtype; InvalidInput for empty/ragged/non-numeric/NaN/out of
    range, and past ``max_elements`` (MAX_INFER_ELEMENTS: bulk work belongs in a batch job). BYTES: ``to_strings``."""
    if spec.datatype == BYTES:
        return to_strings(value, field, expected, max_elements, max_string_bytes)
    dtype = NP_DTYPES.get(spec.datatype)
    if dtype is None:
        raise InvalidInput(f"{field}: datatype {spec.datatype} is not supported over JSON", field=field)
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{field} must be a non-empty list of numbers; {expected}", field=field)
    if len(value) > max_elements:  # before numpy reads them all (a flat list of strings: 0.5 s per 2.5 M)
        raise too_many_elements(field, len(value), max_elements)
    quick = _small_flat(value, dtype, max_elements)
    if quick is not None:
        return quick
    try:
        array = np.array(value)
    except (ValueError, TypeError):
        raise InvalidInput(f"{field} is ragged (rows of different lengths); {expected}", field=field) from None
    if array.size == 0:
        raise InvalidInput(f"{field} is empty; {expected}", field=field)
    if array.size > max_elements:
        raise too_many_elements(field, array.size, max_elements)
    return cast_numbers(array, dtype, spec.datatype, field, expected)


def to_strings(
    value: object,
    field: str,
    expected: str,
    max_elements: int = MAX_ELEMENTS,
    max_string_bytes: int = MAX_STRING_BYTES,
) -> np.ndarray[Any, Any]:
    """JSON strings (nested as the tensor's shape; a lone string is a list of one) -> a BYTES tensor: an object
    array of their UTF-8 bytes. InvalidInput for an empty or ragged list, an element that is not a string
    (named by its index), past ``max_elements``, and a string longer than ``max_string_bytes`` bytes."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{field} must be a non-empty list of strings; {expected}", field=field)
    flat: list[Any]
    shape: tuple[int, ...]
    if len(value) <= max_elements and all(type(item) is str for item in value):  # the common flat list
        flat, shape = value, (len(value),)
    else:
        try:
            nested = np.array(value, dtype=object)  # rows of different lengths stay lists
        except (ValueError, TypeError):
            raise InvalidInput(f"{field} is ragged (rows of different lengths); {expected}", field=field) from None
        if nested.size > max_elements:
            raise too_many_elements(field, nested.size, max_elements)
        if nested.size == 0:
            raise InvalidInput(f"{field} is empty; {expected}", field=field)
        flat, shape = nested.reshape(-1).tolist(), nested.shape
        bad = next((i for i, item in enumerate(flat) if type(item) is not str), None)
        if bad is not None:
            where = f"{field}{_index(bad, shape)}"
            if isinstance(flat[bad], list):
                raise InvalidInput(f"{field} is ragged (rows of different lengths); {expected}", field=field)
            raise InvalidInput(
                f"{where} is {_json_kind(flat[bad])}, not a string: a {BYTES} tensor holds strings; {expected}",
                field=field,
            )
    too_long = next((i for i, text in enumerate(flat) if len(text) > max_string_bytes), None)  # chars <= bytes
    try:
        encoded = [text.encode("utf-8") for text in flat]
    except UnicodeEncodeError:
        bad = next(i for i, text in enumerate(flat) if not _encodes(text))
        raise InvalidInput(
            f"{field}{_index(bad, shape)} is not valid Unicode (a lone surrogate)", field=field
        ) from None
    if too_long is None and max(map(len, encoded)) > max_string_bytes:
        too_long = next(i for i, data in enumerate(encoded) if len(data) > max_string_bytes)
    if too_long is not None:
        raise InvalidInput(
            f"{field}{_index(too_long, shape)} is {len(encoded[too_long])} bytes long (UTF-8); a string may hold "
            f"at most {max_string_bytes} bytes (MAX_STRING_BYTES)",
            field=field,
        )
    array = np.empty(len(encoded), dtype=object)
    array[:] = encoded
    return array.reshape(shape)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _index(flat_index: int, shape: tuple[int, ...]) -> str:
    """``[i][j]``: where element ``flat_index`` (row-major) sits in a tensor of ``shape``."""
    return "".join(f"[{int(i)}]" for i in np.unravel_index(flat_index, shape))


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    return "a list" if isinstance(value, list) else type(value).__name__


def check_strings(items: list[bytes], field: str, max_string_bytes: int) -> None:
    """Binary BYTES elements (any bytes: they need not be UTF-8) are bounded like JSON strings."""
    too_long = next((i for i, data in enumerate(items) if len(data) > max_string_bytes), None)
    if too_long is not None:
        raise InvalidInput(
            f"{field} element {too_long} is {len(items[too_long])} bytes long; a string may hold at most "
            f"{max_string_bytes} bytes (MAX_STRING_BYTES)",
            field=field,
        )


def _small_flat(value: list[Any], dtype: Any, max_elements: int) -> np.ndarray[Any, Any] | None:
    """The common single row (a short flat list of plain numbers that fit the datatype) without numpy's
    checks; None for anything else, which takes the general path and its precise errors."""
    if len(value) > _QUICK_MAX or len(value) > max_elements:
        return None
    target = np.dtype(dtype)
    types = set(map(type, value))
    if target.kind == "f":
        if not types <= _NUMBERS or not max(map(abs, value)) <= _FLOAT_MAX[target.itemsize]:  # NaN: False
            return None
    elif target.kind in "iu":
        bounds = _INT_BOUNDS.get(target.str)
        if types != {int} or bounds is None or min(value) < bounds[0] or max(value) > bounds[1]:
            return None
    else:
        return None
    return np.array(value, dtype=target)


_QUICK_MAX = 64
_NUMBERS = frozenset({int, float})
_INT_BOUNDS = {
    np.dtype(t).str: (int(np.iinfo(t).min), int(np.iinfo(t).max))
    for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
}


def too_many_elements(field: str, size: int, limit: int) -> InvalidInput:
    return InvalidInput(
        f"{field} has {size} elements; one request may carry at most {limit} "
        "(MAX_INFER_ELEMENTS); send bulk work as a batch job (POST /v1/batch)",
        field=field,
    )


def cast_numbers(
    array: np.ndarray[Any, Any], dtype: Any, datatype: str, field: str, expected: str
) -> np.ndarray[Any, Any]:
    """Check the values are numbers the datatype can hold (finite, in range, integral for integers), then cast."""
    if datatype == "BOOL":
        if array.dtype.kind != "b":
            raise InvalidInput(f"{field} must hold true/false values; {expected}", field=field)
        return array.astype(dtype)
    kind = array.dtype.kind
    if kind not in "iuf":
        raise InvalidInput(f"{field} must hold only numbers; {expected}", field=field)
    target = np.dtype(dtype)
    if target.kind == "f":  # integers too: 70000 is no FP16 (it would become infinity, then null)
        if kind == "f" or (target.itemsize < 8 and array.size):
            biggest = np.abs(array.astype(np.float64, copy=False)).max() if array.size else 0.0
            if not biggest <= _FLOAT_MAX[target.itemsize]:  # NaN compares false too
                if not np.isfinite(array).all():
                    raise InvalidInput(f"{field} holds NaN or infinity; {expected}", field=field)
                raise InvalidInput(
                    f"{field} holds values beyond the {datatype} range (largest magnitude "
                    f"{_FLOAT_MAX[target.itemsize]:.6g}); {expected}",
                    field=field,
                )
        return array.astype(target, copy=False)
    if kind == "f":
        if not np.isfinite(array).all():
            raise InvalidInput(f"{field} holds NaN or infinity; {expected}", field=field)
        if not (array == np.round(array)).all():
            raise InvalidInput(f"{field} must hold integers; {expected}", field=field)
    bounds = np.iinfo(target)
    if array.size and (array.min() < bounds.min or array.max() > bounds.max):
        raise InvalidInput(
            f"{field} holds values outside the {datatype} range [{bounds.min}, {bounds.max}]; {expected}", field=field
        )
    return array.astype(target, copy=False)


_FLOAT_MAX = {
    2: float(np.finfo(np.float16).max),
    4: float(np.finfo(np.float32).max),
    8: float(np.finfo(np.float64).max),
}


def check_finite(array: np.ndarray[Any, Any], field: str, expected: str) -> np.ndarray[Any, Any]:
    """Binary tensors come as raw bytes: NaN and infinities are refused like in JSON."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{field} holds NaN or infinity; {expected}", field=field)
    return array


# -- answers ---------------------------------------------------------------------
BASE64 = "base64"  # the key of a BYTES element that is not valid UTF-8: {"base64": "<standard base64>"}


def text_of(item: object) -> str | dict[str, str]:
    """One BYTES element for JSON: its text when it is valid UTF-8, else ``{"base64": ...}``."""
    if isinstance(item, str):
        return item
    if not isinstance(item, bytes | bytearray):
        return str(item)
    data = bytes(item)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {BASE64: base64.b64encode(data).decode("ascii")}


def json_values(array: np.ndarray[Any, Any]) -> Any:
    """A tensor as (nested) JSON lists; BYTES elements through ``text_of``."""
    if array.dtype.kind not in "OSU" or array.size == 0:
        return array.tolist()
    if array.ndim == 0:
        return text_of(array.item())
    nested: list[Any] = [text_of(item) for item in array.reshape(-1).tolist()]
    for size in reversed(array.shape[1:]):
        nested = [nested[i : i + size] for i in range(0, len(nested), size)]
    return nested


def flat_texts(array: np.ndarray[Any, Any]) -> tuple[list[str], bool]:
    """A BYTES tensor as the flat ``data`` of a v2 JSON answer, and whether it is base64: the text of every
    element when all are valid UTF-8, else every element in standard base64 (the answer then says
    ``"parameters": {"content_type": "base64"}``, the marker KServe's MLServer uses)."""
    items = [item if isinstance(item, bytes) else str(item).encode("utf-8") for item in array.reshape(-1).tolist()]
    try:
        return [data.decode("utf-8") for data in items], False
    except UnicodeDecodeError:
        return [base64.b64encode(data).decode("ascii") for data in items], True


def outputs_json(info: ModelInfo, outputs: Mapping[str, np.ndarray[Any, Any]], single: bool) -> dict[str, object]:
    """Every output tensor as lists; a single row loses its batch dimension."""
    return {name: json_values(a[0] if single and info.rows_first else a) for name, a in outputs.items()}


def prediction_of(info: ModelInfo, outputs: Mapping[str, np.ndarray[Any, Any]], single: bool) -> Any:
    """Class name (or id) per row: a string ``label`` output as it is, else the class of an integer
    ``label``/``argmax`` or the argmax of ``probabilities``."""
    texts = _text_labels(outputs)
    if texts is not None:
        if not info.rows_first:
            return text_of(texts.reshape(-1)[0])
        per_text = [text_of(v) for v in texts.reshape(texts.shape[0], -1)[:, 0]]
        return per_text[0] if single else per_text
    ids = _class_ids(outputs)
    if ids is None:
        first = next(iter(outputs.values()), None)
        return None if first is None else outputs_json(info, {"_": first}, single)["_"]
    if not info.rows_first:
        return _name(info, int(ids.reshape(-1)[0]))
    per_row = [_name(info, int(v)) for v in ids.reshape(ids.shape[0], -1)[:, 0]]
    return per_row[0] if single else per_row


def _text_labels(outputs: Mapping[str, np.ndarray[Any, Any]]) -> np.ndarray[Any, Any] | None:
    for name in ("label", "labels", "class"):
        found = outputs.get(name)
        if found is not None and found.dtype.kind in "OSU" and found.size and found.ndim:
            return found
    return None


def _class_ids(outputs: Mapping[str, np.ndarray[Any, Any]]) -> np.ndarray[Any, Any] | None:
    for name in ("label", "labels", "class", "argmax"):
        if name in outputs and outputs[name].dtype.kind in "iu":
            return outputs[name]
    probs = outputs.get("probabilities")
    return None if probs is None else probs.argmax(axis=-1)


def _name(info: ModelInfo, class_id: int) -> str | int:
    return info.labels[class_id] if 0 <= class_id < len(info.labels) else class_id
