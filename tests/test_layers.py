"""The package's layers (docs/ARCHITECTURE.md, "Layers"): no import from a lower layer to a higher
one, no import cycle between modules.

Every module under ``falcon_rl/``, ``envs/`` (``falcon_rl.envs``) and ``agents/``
(``falcon_rl.agents``) is parsed with :mod:`ast`; nothing is imported. Every ``falcon_rl`` import
counts, also one inside a function (it is a dependency all the same, only a later one); the only
imports left out are those under ``if TYPE_CHECKING:``, which never run. An import names the module
it loads: ``from falcon_rl.models import mafa`` depends on ``falcon_rl.models.mafa``,
``from falcon_rl.models import ALBEF`` on the package ``falcon_rl.models`` (its ``__init__``).
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package -> its directory (pyproject.toml, ``[tool.setuptools] package-dir``)
PACKAGE_DIRS = {"falcon_rl": ROOT / "falcon_rl", "falcon_rl.envs": ROOT / "envs", "falcon_rl.agents": ROOT / "agents"}

#: the layers, bottom to top: a module may import modules of its own layer and of the layers below
#: it, never of a layer above. A name stands for that module and everything under it, except
#: ``falcon_rl``, which is the top-level package's ``__init__`` only.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("helpers", ("falcon_rl", "falcon_rl.utils", "falcon_rl.rng", "falcon_rl.torch_io", "falcon_rl.timing",
                 "falcon_rl.progress", "falcon_rl.distributed")),
    ("config", ("falcon_rl.config",)),
    ("data, models", ("falcon_rl.data", "falcon_rl.models")),
    ("mining", ("falcon_rl.mining",)),
    ("training", ("falcon_rl.training",)),
    ("envs", ("falcon_rl.envs",)),
    ("agents", ("falcon_rl.agents",)),
    ("experiments, ablation", ("falcon_rl.experiments", "falcon_rl.ablation")),
    ("commands, cli", ("falcon_rl.commands", "falcon_rl.cli", "falcon_rl.__main__")),
]
#: parts of one layer that do not import each other (in either direction)
APART: list[tuple[str, str]] = [("falcon_rl.data", "falcon_rl.models")]


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module
    path: Path
    line: int
    text: str  # the import statement

    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}: {self.text}"


# ------------------------------------------------------------------------------ parsing

def discover(package_dirs: dict[str, Path] = PACKAGE_DIRS) -> dict[str, Path]:
    """Module name -> file of every module of the packages (a package is its ``__init__``)."""
    nested = {d.resolve() for d in package_dirs.values()}
    modules: dict[str, Path] = {}
    for package, directory in package_dirs.items():
        for path in sorted(directory.rglob("*.py")):
            rel = path.relative_to(directory)
            # a directory mapped to a package of its own is walked under that name
            if any((directory / part).resolve() in nested - {directory.resolve()}
                   for part in _prefixes(rel.parts[:-1])):
                continue
            parts = [*rel.parts[:-1], rel.stem] if rel.stem != "__init__" else list(rel.parts[:-1])
            modules[".".join([package, *parts])] = path
    return modules


def _prefixes(parts: tuple[str, ...]) -> list[Path]:
    return [Path(*parts[: i + 1]) for i in range(len(parts))]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` loads: itself, or the nearest enclosing module that exists."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, source: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The ``falcon_rl`` imports of one module's source (see the module docstring)."""
    tree = ast.parse(source, filename=str(path))
    is_package = path.name == "__init__.py"
    lines = source.splitlines()
    found: list[Import] = []
    seen: set[tuple[str, int]] = set()

    def add(node: ast.stmt, name: str) -> None:
        if name != "falcon_rl" and not name.startswith("falcon_rl."):
            return
        target = _resolve(name, modules)
        if target is not None and target != module and (target, node.lineno) not in seen:
            seen.add((target, node.lineno))
            found.append(Import(module, target, path, node.lineno, lines[node.lineno - 1].strip()))

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit_one(stmt)
            else:
                visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(node, full if full in modules else base)
        else:
            visit(node)

    visit(tree)
    return found


def all_imports(modules: dict[str, Path]) -> list[Import]:
    out: list[Import] = []
    for module, path in modules.items():
        out.extend(imports_of(module, path.read_text(encoding="utf-8"), path, modules))
    return out


# ------------------------------------------------------------------------------ the rules

def part_of(module: str) -> tuple[int, str] | None:
    """``(layer index, part)`` of a module: the longest name in :data:`LAYERS` that covers it."""
    best: tuple[int, str] | None = None
    for index, (_, parts) in enumerate(LAYERS):
        for part in parts:
            covers = module == part or (part != "falcon_rl" and module.startswith(part + "."))
            if covers and (best is None or len(part) > len(best[1])):
                best = (index, part)
    return best


def layer_violations(imports: list[Import]) -> list[str]:
    """Imports from a lower layer to a higher one, and between parts kept :data:`APART`."""
    apart = {frozenset(pair) for pair in APART}
    out = []
    for imp in imports:
        src, dst = part_of(imp.source), part_of(imp.target)
        if src is None or dst is None:
            continue  # test_every_module_has_a_layer names it
        if dst[0] > src[0]:
            out.append(f"{imp.where()}  ({imp.source} in layer '{LAYERS[src[0]][0]}' imports {imp.target} "
                       f"of the higher layer '{LAYERS[dst[0]][0]}')")
        elif src[1] != dst[1] and frozenset((src[1], dst[1])) in apart:
            out.append(f"{imp.where()}  ({src[1]} and {dst[1]} share a layer but must not import each other)")
    return out


def import_cycles(imports: list[Import]) -> list[tuple[list[str], list[Import]]]:
    """Each group of modules that import one another (strongly connected, Tarjan, iterative) with
    a shortest cycle through its first module."""
    graph: dict[str, dict[str, Import]] = {}
    for imp in imports:
        graph.setdefault(imp.source, {}).setdefault(imp.target, imp)
        graph.setdefault(imp.target, {})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    cycles = []
    for group in groups:  # breadth first from the group's first module back to it, inside the group
        members, start = set(group), group[0]
        parent: dict[str, str | None] = {start: None}
        queue, last = deque([start]), None
        while last is None:
            node = queue.popleft()
            for child in sorted(graph[node]):
                if child == start:
                    last = node
                    break
                if child in members and child not in parent:
                    parent[child] = node
                    queue.append(child)
        path = [last]
        while parent[path[-1]] is not None:
            path.append(parent[path[-1]])
        path = [*reversed(path), start]
        cycles.append((group, [graph[a][b] for a, b in zip(path, path[1:])]))
    return cycles


def describe_cycle(found: tuple[list[str], list[Import]]) -> str:
    group, cycle = found
    names = " -> ".join([imp.source for imp in cycle] + [cycle[0].source])
    others = sorted(set(group) - {imp.source for imp in cycle})
    text = names + "\n" + "\n".join(f"    {imp.where()}" for imp in cycle)
    return text + (f"\n    (the same group of modules that import one another: {others})" if others else "")


# ------------------------------------------------------------------------------ tests

@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return discover()


@pytest.fixture(scope="module")
def imports(modules) -> list[Import]:
    return all_imports(modules)


def test_every_module_has_a_layer(modules):
    assert len(modules) > 100 and "falcon_rl.envs" in modules and "falcon_rl.agents.base" in modules
    unplaced = sorted(m for m in modules if part_of(m) is None)
    assert not unplaced, f"modules outside every layer (add them to LAYERS in {Path(__file__).name}): {unplaced}"


def test_no_import_from_a_lower_layer_to_a_higher_one(imports):
    bad = layer_violations(imports)
    order = " < ".join(name for name, _ in LAYERS)
    assert not bad, f"{len(bad)} import(s) against the layers ({order}):\n" + "\n".join(bad)


def test_no_import_cycles(imports):
    cycles = import_cycles(imports)
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(describe_cycle(c) for c in cycles)


#: the house's size limits (issue #31): a module that outgrows them is split by what it does
MAX_MODULE_LINES = 450
MAX_ENV_CLASS_LINES = 300


def test_no_source_module_outgrows_its_limit_and_the_env_class_stays_small(modules):
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules.items()}
    big = sorted((n, name) for name, n in sizes.items() if n > MAX_MODULE_LINES)
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them by job): {big}"
    tree = ast.parse(modules["falcon_rl.envs.negative_mining"].read_text())
    env = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "NegativeMiningEnv")
    assert env.end_lineno - env.lineno + 1 <= MAX_ENV_CLASS_LINES


# ------------------------------------------------------------------------------ the checker itself

def _fake_package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp_path / "falcon_rl" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return discover({"falcon_rl": tmp_path / "falcon_rl"})


def test_checker_sees_function_level_and_relative_imports_but_not_type_checking(tmp_path):
    modules = _fake_package(tmp_path, {
        "__init__.py": "",
        "models/__init__.py": "from falcon_rl.models.a import A\n",
        "models/a.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from falcon_rl.training import t\n"
                        "A = 1\ndef f():\n    from falcon_rl.training.t import T\n    return T\n"),
        "models/b.py": "from . import a\nfrom .a import A\nimport falcon_rl.data.d as d\n",
        "data/__init__.py": "",
        "data/d.py": "from falcon_rl.models import A\n",
        "training/__init__.py": "",
        "training/t.py": "from falcon_rl.models import b\nT = 1\n",
    })
    imports = all_imports(modules)
    edges = {(i.source, i.target, i.line) for i in imports}
    assert ("falcon_rl.models.a", "falcon_rl.training.t", 6) in edges  # inside a function
    assert not any(i.line == 3 for i in imports if i.source == "falcon_rl.models.a")  # TYPE_CHECKING
    assert ("falcon_rl.models.b", "falcon_rl.models.a", 1) in edges  # from . import a
    assert ("falcon_rl.models.b", "falcon_rl.models.a", 2) in edges  # from .a import A
    assert ("falcon_rl.data.d", "falcon_rl.models", 1) in edges  # a name of the package: its __init__
    bad = layer_violations(imports)
    assert len(bad) == 3, bad
    assert any("models/a.py:6" in b and "higher layer 'training'" in b for b in bad)
    assert any("models/b.py:3" in b and "must not import each other" in b for b in bad)
    assert any("data/d.py:1" in b and "must not import each other" in b for b in bad)
    cycles = [describe_cycle(c) for c in import_cycles(imports)]
    assert len(cycles) == 1, cycles
    assert cycles[0].splitlines()[0] == ("falcon_rl.data.d -> falcon_rl.models -> falcon_rl.models.a -> "
                                         "falcon_rl.training.t -> falcon_rl.models.b -> falcon_rl.data.d")
    assert "models/a.py:6" in cycles[0] and "training/t.py:1" in cycles[0] and "models/b.py:3" in cycles[0]


def test_checker_finds_a_two_module_cycle_and_places_unknown_modules_nowhere(tmp_path):
    modules = _fake_package(tmp_path, {
        "__init__.py": "",
        "mining/__init__.py": "from falcon_rl.mining.x import X\n",
        "mining/x.py": "X = 1\ndef g():\n    from falcon_rl.mining import X\n",
        "newthing.py": "",
    })
    cycles = import_cycles(all_imports(modules))
    assert [describe_cycle(c).splitlines()[0] for c in cycles] == [
        "falcon_rl.mining -> falcon_rl.mining.x -> falcon_rl.mining"]
    assert part_of("falcon_rl.newthing") is None and part_of("falcon_rl") == (0, "falcon_rl")
    assert part_of("falcon_rl.models.mafa") == (2, "falcon_rl.models")
