"""Triton model configurations (``config.pbtxt``): parse, normalise, render, compare.

Every version of a Triton model shares its one configuration, so Kinfer keeps one per
managed Triton model, and a version whose configuration differs goes to another Triton model
(compared after normalising: the name is the Triton model's, and ``version_policy`` belongs to
the agent, which writes the versions to load). ``difference`` says how two configurations'
inputs and outputs differ (what an alias move checks). Parsing uses the ``ModelConfig`` protobuf that
tritonclient ships, so a config that Triton would reject for its syntax is a 400 here.

A Python-backend model may run in its own conda-pack environment (the ``EXECUTION_ENV_PATH``
parameter); that path must lie inside the model's own folder
(``$$TRITON_MODEL_DIRECTORY/<relative path>``), never elsewhere on the Triton host, where it
could reach another model's files or anything else the server can read.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from shared.errors import InvalidInput

ENV_PATH = "EXECUTION_ENV_PATH"
MODEL_DIRECTORY = "$$TRITON_MODEL_DIRECTORY/"


def _model_config() -> Any:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.ModelConfig()


def parse(text: str, field: str = "artifact") -> Any:
    """``text`` as a ModelConfig message; InvalidInput naming the first syntax error."""
    from google.protobuf import text_format

    config = _model_config()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise InvalidInput(f"config.pbtxt does not parse: {str(exc)[:300]}", field=field) from None
    return config


def quote(value: str) -> str:
    """``value`` as a protobuf text-format string literal, escaped exactly as the format requires.

    Quotes, backslashes, newlines and other control characters become escapes, so no value (a tensor
    name from an uploaded graph, a class name) can end the string early and add fields to a config.
    """
    from google.protobuf import text_encoding

    return '"' + str(text_encoding.CEscape(value, as_utf8=True)) + '"'


def render(config: Any) -> str:
    from google.protobuf import text_format

    return str(text_format.MessageToString(config))


def normalise(text: str, triton_model: str, field: str = "artifact") -> str:
    """The config as Kinfer stores it: named ``triton_model``, without a version policy."""
    config = parse(text, field)
    if not (config.backend or config.platform):
        raise InvalidInput('config.pbtxt names neither a backend nor a platform (e.g. backend: "python")', field=field)
    env_path(config, field)
    config.name = triton_model
    config.ClearField("version_policy")
    return render(config)


def env_path(config: Any, field: str = "artifact") -> str | None:
    """The path of the model's conda-pack environment relative to its folder (None: none is set);
    InvalidInput for an ``EXECUTION_ENV_PATH`` that is not ``$$TRITON_MODEL_DIRECTORY/<relative path>``."""
    keys = [k for k in config.parameters if k.strip().upper() == ENV_PATH]
    if not keys:
        return None
    if keys != [ENV_PATH]:
        raise InvalidInput(f"config.pbtxt: write the parameter {ENV_PATH} exactly so, once", field=field)
    value = config.parameters[ENV_PATH].string_value
    rest = value.removeprefix(MODEL_DIRECTORY)
    parts = PurePosixPath(rest).parts
    if (
        rest == value
        or not parts
        or rest.startswith("/")
        or any(part in (".", "..") for part in rest.split("/"))
        or any(c in rest for c in "$\\\0")
        or parts[0].isdigit()
    ):
        raise InvalidInput(
            f"config.pbtxt: {ENV_PATH} {value[:200]!r} must name a file or folder inside the model's own folder, "
            f'as "{MODEL_DIRECTORY}<path>" (e.g. "{MODEL_DIRECTORY}env.tar.gz"), outside the version folder',
            field=field,
        )
    return PurePosixPath(rest).as_posix()


def with_versions(text: str, versions: list[int]) -> str:
    """``text`` with ``version_policy { specific { versions: [...] } }`` (what the agent loads)."""
    config = parse(text)
    config.ClearField("version_policy")
    config.version_policy.specific.versions.extend(sorted(versions))
    return render(config)


def renamed(text: str, triton_model: str) -> str:
    """``text`` (a stored, normalised config) as the config of ``triton_model``."""
    config = parse(text)
    config.name = triton_model
    return render(config)


Tensors = dict[tuple[str, str], tuple[str, tuple[int, ...]]]


def tensors(text: str) -> Tensors:
    """{(role, name): (datatype, shape)} as callers see them: a batched model's shapes begin with -1."""
    config = parse(text)
    batch = (-1,) if config.max_batch_size > 0 else ()
    found: Tensors = {}
    for role, items in (("input", config.input), ("output", config.output)):
        for t in items:
            found[(role, t.name)] = (_type_name(t.data_type), batch + tuple(int(d) for d in t.dims))
    return found


def difference(first: str, second: str, first_label: str, second_label: str) -> str:
    """How the inputs and outputs (names, datatypes, shapes) of two configs differ, in words ("" if they do not)."""
    a, b = tensors(first), tensors(second)
    parts = []
    for role, name in sorted(a.keys() | b.keys()):
        key, shown = (role, name), f"{role} {name[:80]!r}"
        if key not in b:
            parts.append(f"{shown} only in {first_label}")
        elif key not in a:
            parts.append(f"{shown} only in {second_label}")
        elif a[key] != b[key]:
            parts.append(f"{shown} is {_shape(a[key])} in {first_label}, {_shape(b[key])} in {second_label}")
    return "; ".join(parts)


def _shape(tensor: tuple[str, tuple[int, ...]]) -> str:
    return f"{tensor[0]} {list(tensor[1])}"


def signature(text: str) -> str:
    """A one-line summary of the inputs and outputs, for conflict messages."""
    config = parse(text)

    def tensors(items: Any) -> str:
        return ", ".join(f"{t.name} {_type_name(t.data_type)} {list(t.dims)}" for t in items)

    return f"max_batch_size {config.max_batch_size}; inputs {tensors(config.input)}; outputs {tensors(config.output)}"


def _type_name(code: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return str(model_config_pb2.DataType.Name(code)).removeprefix("TYPE_")
