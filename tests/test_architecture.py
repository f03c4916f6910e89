"""The package's shape: no module imports one that imports it back; the backend registry is whole."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rfdeploy
from rfdeploy.backends import BACKENDS
from rfdeploy.backends.registry import _resolve

PACKAGE = Path(rfdeploy.__file__).parent


def module_names() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in it (function-local imports too).

    ``from a.b import c`` imports the module ``a.b.c`` where there is one, else ``a.b``. The package
    ``__init__`` that Python runs before a submodule is not counted: it is the package's index.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return {target for target in found if target in modules and target != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# The layers, lowest first: a module imports its own layer and those below it, never one above. Plain data and
# the zoo; files to a searched model; the compiler; where models run; comparing and timing what runs; deploying
# at reduced precision; choices made by measurement; reading and serving the results; the declared stages that
# chain all of it; the Python API; the CLI.
LAYERS = (
    ("errors", "optional", "artifacts", "precision", "modules", "shapes"),
    ("models",),
    ("loader",),
    ("compiler",),
    ("backends",),
    ("measure",),
    ("quantize",),
    ("tuning",),
    ("analysis", "serve"),
    ("stages",),
    ("api",),
    ("commands", "cli", "__main__", ""),
)


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    (index,) = [i for i, names in enumerate(LAYERS) if top in names]
    return index


def climbs(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module in a higher layer, as ``importer -> imported``."""
    return sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                  if layer_of(target) > layer_of(name))


def test_every_module_has_a_layer():
    for name in import_graph():
        layer_of(name)


def test_no_module_imports_a_layer_above_its_own():
    assert climbs(import_graph()) == []


def test_the_climb_finder_finds_climbs():
    assert climbs({"rfdeploy.loader.x": {"rfdeploy.compiler.ir", "rfdeploy.errors"}}) == [
        "rfdeploy.loader.x -> rfdeploy.compiler.ir"]
    assert climbs({"rfdeploy.api": {"rfdeploy.loader.x"}}) == []


def test_no_module_imports_one_that_imports_it_back():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_sees_function_local_and_from_imports():
    graph = import_graph()
    assert "rfdeploy.backends.tensorrt.lib" in graph["rfdeploy.backends.tensorrt.runner"]
    assert "rfdeploy.backends.base" in graph["rfdeploy.measure.verify"]
    assert "rfdeploy.backends" in graph["rfdeploy.tuning.layout"]  # imported inside choose_layout()


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_names_a_factory_and_check_that_exist(name):
    backend = BACKENDS[name]
    assert callable(_resolve(backend.factory))
    assert backend.check is None or callable(_resolve(backend.check))
    assert backend.devices and set(backend.devices) <= {"cpu", "cuda"}


def test_optional_module_imports_on_first_use_and_names_the_install():
    from rfdeploy.errors import RFDeployError
    from rfdeploy.optional import OptionalModule

    missing = OptionalModule("rfdeploy_no_such_package", "pip install it")
    with pytest.raises(RFDeployError, match="^pip install it$"):
        missing.anything  # noqa: B018
    assert not missing.available()
    hollow = OptionalModule("json", "not the real json", needs="no_such_attribute")  # like tensorrt-stubs
    with pytest.raises(RFDeployError, match="not the real json"):
        hollow.require()
    present = OptionalModule("json", "unused")
    assert present.dumps([1]) == "[1]" and present.available()


def test_zoo_names_come_from_the_builders_and_are_taken_once():
    from rfdeploy import models

    entries = models.entries()
    assert [entry.name for entry in entries] == [entry.builder.__name__ for entry in entries]

    def resnet50():
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="zoo model 'resnet50' is registered twice: in rfdeploy.models.resnet"):
        models.register(input_shape=(1, 3, 8, 8), description="a second one")(resnet50)
    assert models.get("resnet50").builder.__module__ == "rfdeploy.models.resnet"


def test_a_zoo_file_or_command_that_fails_to_import_is_an_error_not_a_gap(monkeypatch):
    from rfdeploy import cli, models

    monkeypatch.setattr(models, "_MODULES", (*models._MODULES, "no_such_zoo_file"))
    with pytest.raises(ModuleNotFoundError, match="no_such_zoo_file"):
        models.entries()
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli.build_parser()


def test_commands_share_arguments_through_common_not_through_each_other():
    graph = import_graph()
    commands = [name for name in graph if name.startswith("rfdeploy.commands.")]
    for name in commands:
        others = {target for target in graph[name] if target in commands} - {"rfdeploy.commands.common"}
        if name == "rfdeploy.commands.demo":  # runs `rfdeploy export` as a user would
            assert others == {"rfdeploy.commands.export"}
        else:
            assert not others, f"{name} imports {others}"
