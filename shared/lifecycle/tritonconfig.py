"""Triton model configurations (``config.pbtxt``): parse, normalise, render.

Every version of a Triton model shares its one configuration, so Kinfer keeps one per
managed Triton model and refuses a version whose configuration differs (after
normalising: the name is the Triton model's, and ``version_policy`` belongs to the agent,
which writes the versions to load). Parsing uses the ``ModelConfig`` protobuf that
tritonclient ships, so a config that Triton would reject for its syntax is a 400 here.
"""

from __future__ import annotations

from typing import Any

from shared.errors import InvalidInput


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


def render(config: Any) -> str:
    from google.protobuf import text_format

    return str(text_format.MessageToString(config))


def normalise(text: str, triton_model: str, field: str = "artifact") -> str:
    """The config as Kinfer stores it: named ``triton_model``, without a version policy."""
    config = parse(text, field)
    if not (config.backend or config.platform):
        raise InvalidInput('config.pbtxt names neither a backend nor a platform (e.g. backend: "python")', field=field)
    config.name = triton_model
    config.ClearField("version_policy")
    return render(config)


def with_versions(text: str, versions: list[int]) -> str:
    """``text`` with ``version_policy { specific { versions: [...] } }`` (what the agent loads)."""
    config = parse(text)
    config.ClearField("version_policy")
    config.version_policy.specific.versions.extend(sorted(versions))
    return render(config)


def signature(text: str) -> str:
    """A one-line summary of the inputs and outputs, for conflict messages."""
    config = parse(text)

    def tensors(items: Any) -> str:
        return ", ".join(f"{t.name} {_type_name(t.data_type)} {list(t.dims)}" for t in items)

    return f"max_batch_size {config.max_batch_size}; inputs {tensors(config.input)}; outputs {tensors(config.output)}"


def _type_name(code: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return str(model_config_pb2.DataType.Name(code)).removeprefix("TYPE_")
