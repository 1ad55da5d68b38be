"""`-o json|yaml|table`: YAML that any YAML parser reads back as the same data; aligned tables."""

from __future__ import annotations

import json

import pytest
import yaml

from shared.cli import output

SAMPLES = [
    {
        "id": "5f0c",
        "version": "1.0",
        "status": "active",
        "tags": ["demo", "a b"],
        "metadata": {},
        "url": "http://127.0.0.1:9000/x?a=1&b=2",
        "empty": "",
        "n": 3,
        "ratio": 0.5,
        "flag": True,
        "none": None,
        "yes": "yes",
        "time": "2024-05-01T10:00:00+00:00",
        "colon": "a: b",
        "hash": "x #y",
        "dash": "-x",
        "quote": 'say "hi"\nthen go',
        "unicode": "café ☕",
        "nested": [{"a": 1, "b": [1, 2]}, [], {}, [[1]]],
    },
    [],
    {},
    "plain",
    "1.0",
    None,
    0,
    [1, "two", None],
]


@pytest.mark.parametrize("data", SAMPLES)
def test_yaml_reads_back_as_the_same_data(data: object) -> None:
    assert yaml.safe_load(output.to_yaml(data)) == data


def test_json_is_the_answer_as_is() -> None:
    assert json.loads(output.render("json", SAMPLES[0])) == SAMPLES[0]


def test_table_aligns_columns_and_marks_empty_cells() -> None:
    rows = [{"id": "a", "name": "first", "scopes": ["infer", "batch"]}, {"id": "bbbb", "name": None, "scopes": []}]
    text = output.table(
        rows, [output.column("ID", "id"), output.column("NAME", "name"), output.column("SCOPES", "scopes")]
    )
    assert text.splitlines() == ["ID    NAME   SCOPES", "a     first  infer,batch", "bbbb  -      -"]


def test_describe_shows_the_chosen_fields_in_order() -> None:
    text = output.describe({"b": 2, "a": {"x": [1]}, "c": None}, ("a", "b", "c", "missing"))
    assert text.splitlines() == ['a:  {"x":[1]}', "b:  2", "c:  -"]


@pytest.mark.parametrize(
    "text, width, expected",
    [
        ("short enough", 20, "short enough"),
        ("the model failed to load: unexpected shape", 20, "the model failed..."),
        ("the model failed to load: unexpected shape", 28, "the model failed to load..."),  # no dangling ":"
        ("averyveryverylongword and more", 10, "averyveryverylongword..."),  # a word longer than the column stays
        ("spaces   and\nnewlines  collapse", 40, "spaces and newlines collapse"),
    ],
)
def test_shorten_cuts_after_a_whole_word(text: str, width: int, expected: str) -> None:
    assert output.shorten(text, width) == expected


def test_a_column_with_a_width_never_cuts_a_word() -> None:
    reason = "Triton could not load the model: unexpected input shape for features"
    text = output.table([{"r": reason}], [output.column("REASON", "r", width=30)])
    shown = text.splitlines()[1]
    assert shown == "Triton could not load the..." and reason.startswith(shown.removesuffix("..."))


def test_bounded_numbers_are_argparse_usage_errors() -> None:
    import argparse

    parse = output.bounded(1, 500)
    assert parse("500") == 500
    for bad, message in (("0", "between 1 and 500"), ("x", "not a whole number")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(bad)
