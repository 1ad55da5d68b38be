"""Rules of terraform/ read from the parsed HCL (issue 10): what makes a plan or an apply fail.

- A module-level ``depends_on`` defers every data source of the called module to
  apply time, so a ``for_each`` over one of them is unknown at plan ("Invalid
  for_each argument", hashicorp/terraform#28131). The same holds for a data source
  with its own ``depends_on``. Ordering goes through resource-level ``depends_on``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.unit.deploy.support import TF, all_typed, modules, named, parse, unquote

DATA_REF = re.compile(r"\bdata\.([a-z0-9_]+)\.([a-z0-9_]+)\b")


def module_calls(directory: Path) -> dict[str, dict[str, Any]]:
    return named(parse(directory).get("module", []))


def data_feeding_for_each(directory: Path) -> set[tuple[str, str]]:
    """(type, name) of the data sources whose attributes a for_each of this module iterates."""
    blocks = parse(directory)
    fed = set()
    for body in [*all_typed(blocks.get("resource", [])).values(), *all_typed(blocks.get("data", [])).values(),
                 *module_calls(directory).values()]:
        fed |= set(DATA_REF.findall(str(body.get("for_each", ""))))
    return fed


def test_the_rule_sees_the_platform_modules_for_each_over_its_overlay() -> None:
    assert ("kustomization_overlay", "kinfer") in data_feeding_for_each(TF / "modules" / "platform")
    assert ("kustomization_overlay", "serving") in data_feeding_for_each(TF / "modules" / "knative")


def test_no_module_level_depends_on_onto_a_module_whose_data_sources_feed_for_each() -> None:
    for directory in [TF, *modules()]:
        for name, call in module_calls(directory).items():
            if not call.get("depends_on"):
                continue
            fed = data_feeding_for_each((directory / unquote(call["source"])).resolve())
            assert not fed, (f"module {name} has depends_on = {call['depends_on']}: its data sources "
                             f"{sorted('.'.join(f) for f in fed)} would be read at apply time and the for_each "
                             "over them is unknown at plan; order with resource-level depends_on instead")


def test_no_data_source_feeding_for_each_has_depends_on() -> None:
    for directory in [TF, *modules()]:
        fed = data_feeding_for_each(directory)
        for key, body in all_typed(parse(directory).get("data", [])).items():
            if key in fed:
                assert not body.get("depends_on"), f"{directory.name}: data.{'.'.join(key)} has depends_on"


def test_the_platform_is_applied_after_what_it_runs_on() -> None:
    """Without module depends_on, the platform's first resources wait for the other modules' ``ready`` outputs."""
    call = module_calls(TF)["platform"]
    prerequisites = str(call.get("prerequisites"))
    for module in ("knative", "kafka", "data"):
        assert f"module.{module}.ready" in prerequisites, f"platform must wait for module.{module}.ready"
        output = named(parse(TF / "modules" / module)["output"])["ready"]
        assert output.get("depends_on"), f"module {module}: output ready must depend on what the module applies"
    platform = parse(TF / "modules" / "platform")
    gate = all_typed(platform["resource"])[("terraform_data", "prerequisites")]
    assert "var.prerequisites" in str(gate["input"])
    namespace = all_typed(platform["resource"])[("kubernetes_namespace", "kinfer")]
    assert "terraform_data.prerequisites" in str(namespace.get("depends_on"))
