"""The shape of the source tree, checked so that it stays easy to pick up.

For every module of indexer/ and api/ (not the generated indexer/xmtp/proto/):

- no import cycles, counting imports inside functions, and importing a package counts as
  importing its __init__; indexer/ does not import api/, except the shell (cli.py, commands/,
  service.py) that wires both into processes;
- imports sit at module level, except where a lazy import is deliberate (LAZY_IMPORTS);
- no module is longer than MAX_LINES;
- each module `<package>/<name>.py` has a test module `tests/test_<name>.py`, or
  `tests/test_<package>_<name>.py` (`<package>` is the module's folder: api, backfill, ...,
  and `indexer` for the shell). A name two modules share must use the second form;
- every package's __init__.py holds a docstring saying what the folder is for, and nothing else.

And for the tests: no test module imports another test module; what several test modules
share lives in a helper module named for what it holds (tests/forge.py, tests/crash_backlog.py, ...).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from source_ast import parse_source

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"  # test modules sit at its top level (TESTS.glob, not rglob: node_modules below)
SOURCE_FOLDERS = ("indexer", "api")
GENERATED = ROOT / "indexer" / "xmtp" / "proto"
# the shell: the `atmx` command and its subcommands, and the wiring of processes
SHELL = frozenset(
    {
        "atmx.indexer.cli",
        "atmx.indexer.service",
        "atmx.indexer.commands.backfill",
        "atmx.indexer.commands.query",
        "atmx.indexer.commands.services",
        "atmx.indexer.commands.verify",
    }
)
MAX_LINES = 400

# module -> the top-level packages it may import inside a function, and why
LAZY_IMPORTS: dict[str, tuple[frozenset[str] | None, str]] = {
    "atmx.indexer.cli": (None, "each command imports what it runs: `atmx --help` starts in ~0.15 s, not ~1 s"),
    "atmx.indexer.store.database": (frozenset({"pgserver"}), "heavy, and only needed for the embedded server"),
}


@dataclass(frozen=True)
class Module:
    name: str  # atmx.indexer.repo.crypto
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(ROOT))


def _modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.is_relative_to(GENERATED):
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = "atmx." + ".".join(parts)
            found[name] = Module(name, path, parse_source(path.read_text(encoding="utf-8"), str(path)))
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module a dotted import name loads (the longest known prefix), or None if not ours."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _with_packages(name: str) -> Iterator[str]:
    """`name` and every package above it: importing a module runs each __init__ on the way."""
    parts = name.split(".")
    for i in range(2, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in MODULES:
            yield prefix


def _imported_names(module: Module, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.name if module.is_package else module.name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    # `from a.b import c` loads a.b, and a.b.c too when c is a module
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _imports(module: Module) -> set[str]:
    deps: set[str] = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in _imported_names(module, node):
                target = _resolve(name) if name.startswith("atmx.") else None
                if target is not None:
                    deps.update(dep for dep in _with_packages(target) if dep != module.name)
    return deps


GRAPH = {name: _imports(module) for name, module in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_cycle_and_relative_imports() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    crypto = MODULES["atmx.indexer.repo.crypto"]
    relative = parse_source("from .mst import MstView\nfrom .. import metrics").body
    assert [_imported_names(crypto, node) for node in relative if isinstance(node, ast.ImportFrom)] == [
        ["atmx.indexer.repo.mst", "atmx.indexer.repo.mst.MstView"],
        ["atmx.indexer", "atmx.indexer.metrics"],
    ]
    assert "atmx.indexer.repo" in GRAPH["atmx.indexer.identity.diddoc"]  # its package's __init__ too


def test_no_import_cycles() -> None:
    cycles = _cycles(GRAPH)
    described = [" <-> ".join(c) + ": " + "; ".join(f"{m} -> {sorted(GRAPH[m] & set(c))}" for m in c) for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(described)


def test_indexer_does_not_import_the_api() -> None:
    wrong = {
        name: sorted(dep for dep in deps if dep.startswith("atmx.api"))
        for name, deps in GRAPH.items()
        if name.startswith("atmx.indexer") and name not in SHELL
    }
    assert {name: deps for name, deps in wrong.items() if deps} == {}


def _top_packages(node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    return {"atmx" if node.level else (node.module or "").split(".")[0]}


def test_imports_are_at_module_level_unless_deliberately_lazy() -> None:
    hidden: list[str] = []
    for module in MODULES.values():
        allowed, _why = LAZY_IMPORTS.get(module.name, (frozenset(), ""))
        for func in ast.walk(module.tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom) and allowed is not None:
                    if not _top_packages(node) <= allowed:
                        hidden.append(f"{module.rel}:{node.lineno} {ast.unparse(node)}")
    assert not hidden, "imports inside functions (move them up, or give LAZY_IMPORTS a reason):\n" + "\n".join(hidden)


def test_timeouts_use_asyncio_timeout_not_wait_for() -> None:
    # On Python 3.11 asyncio.wait_for can drop a cancel that meets the awaited outcome in one loop
    # turn; in a retry loop that is a task that never stops (test_stream shows it on the firehose).
    used = [
        f"{m.rel}:{node.lineno}"
        for m in MODULES.values()
        for node in ast.walk(m.tree)
        if isinstance(node, ast.Attribute) and node.attr == "wait_for" and ast.unparse(node.value) == "asyncio"
    ]
    assert used == [], "use `async with asyncio.timeout(...)` instead"


def test_no_module_is_over_the_line_limit() -> None:
    long = {
        m.rel: n for m in MODULES.values() if (n := len(m.path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these along a natural seam (limit {MAX_LINES} lines)"


def _expected_test_names(module: Module) -> list[str]:
    stem = module.path.stem
    package = module.path.parent.name
    shared = sum(1 for m in MODULES.values() if m.path.stem == stem and not m.is_package) > 1
    return [f"test_{package}_{stem}.py"] if shared else [f"test_{stem}.py", f"test_{package}_{stem}.py"]


def test_every_module_has_its_test_module() -> None:
    missing: dict[str, str] = {}
    for m in MODULES.values():
        names = _expected_test_names(m)
        if not m.is_package and not any((TESTS / n).exists() for n in names):
            missing[m.rel] = " or ".join(names)
    assert missing == {}


def test_the_test_module_rule_uses_the_package_form_for_shared_names() -> None:
    assert _expected_test_names(MODULES["atmx.indexer.repo.crypto"]) == ["test_crypto.py", "test_repo_crypto.py"]
    assert _expected_test_names(MODULES["atmx.indexer.backfill.client"]) == ["test_backfill_client.py"]
    assert _expected_test_names(MODULES["atmx.api.errors"]) == ["test_api_errors.py"]


@pytest.mark.parametrize("name", sorted(n for n, m in MODULES.items() if m.is_package))
def test_package_init_holds_only_its_docstring(name: str) -> None:
    body = MODULES[name].tree.body
    assert ast.get_docstring(MODULES[name].tree), f"{MODULES[name].rel} needs a docstring saying what the folder is for"
    assert len(body) == 1, f"{MODULES[name].rel} holds more than its docstring"


def _test_module_imports(path: Path) -> list[str]:
    tree = parse_source(path.read_text(encoding="utf-8"), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return [name for name in names if name.split(".")[0].startswith("test_")]


def test_no_test_module_imports_another() -> None:
    offenders = {path.name: found for path in sorted(TESTS.glob("*.py")) if (found := _test_module_imports(path))}
    assert offenders == {}, "move what is shared into a helper module named for what it holds"


def test_the_test_import_check_sees_both_forms(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text("import test_a\nfrom test_b import h\nfrom forge import x\ndef f():\n    import test_c\n")
    assert _test_module_imports(sample) == ["test_a", "test_b", "test_c"]


_METRIC_INTERNALS = frozenset({"_value", "_metrics", "_sum", "_buckets", "_created", "_samples"})


def _metric_internals(path: Path) -> list[int]:
    tree = parse_source(path.read_text(encoding="utf-8"), str(path))
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in _METRIC_INTERNALS]


def test_tests_read_metrics_through_the_registry() -> None:
    # REGISTRY.get_sample_value (tests/metric_samples.py) reads what a scrape would; a metric's
    # private attributes change between prometheus-client releases.
    offenders = {path.name: lines for path in sorted(TESTS.glob("*.py")) if (lines := _metric_internals(path))}
    assert offenders == {}
