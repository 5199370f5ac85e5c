"""The package's import rules, read from the source (imports inside functions count too):

- no import circle between modules;
- the stages in pipeline order (data -> tuning -> evaluation -> governance -> operations): a stage never
  imports a later one;
- nothing under tunegate/ but the CLI imports ``tasks``, ``flows`` or ``tunegate.cli``;
- the adapters (MLflow, DVC, git, Prefect) are imported only by the CLI, tasks, flows, operations and the
  parts of governance that move registry state; data, tuning, evaluation, governance.gate,
  governance.audit, params and paths take and return values;
- the adapters never import evaluation, governance or operations (they sit below what uses them);
- the outside systems with their own state and servers (MLflow, Prefect, DVC) are imported raw — any
  submodule, at the top or inside a function, by an import statement or ``importlib.import_module`` of a
  literal name — only by the adapters, the tasks, the flows and the CLI: everything else reaches them
  through ``tunegate.adapters``.

A rule broken names the importing file, its line and the import.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("data", "tuning", "evaluation", "governance", "operations")
ROOTS = ("tunegate", "tasks", "flows")
TOP = ("tunegate.cli", "tasks", "flows")
ADAPTERS = "tunegate.adapters"
MAY_USE_ADAPTERS = ("tunegate.cli", "tasks", "flows", "tunegate.operations", "tunegate.adapters", "tunegate.governance")
PURE_IN_GOVERNANCE = ("tunegate.governance.gate", "tunegate.governance.audit")
SYSTEMS = ("mlflow", "prefect", "dvc")
MAY_IMPORT_SYSTEMS = ("tunegate.adapters", "tunegate.cli", "tasks", "flows")


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (the longest known one)
    file: Path
    line: int


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tunegate" and parts[1] in STAGES else None


def _files(root: Path) -> dict[str, Path]:
    files = {}
    for top in ROOTS:
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def _imported_names(module: str, path: Path) -> list[tuple[int, bool, list[str]]]:
    """(line, relative?, dotted names) of every import in ``path``: statements, and ``importlib.import_module``
    or ``__import__`` of a literal name."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) if node.level \
                else node.module or ""
            found.append((node.lineno, bool(node.level), [f"{base}.{alias.name}" for alias in node.names]))  # a submodule, else its package
        elif isinstance(node, ast.Import):
            found.append((node.lineno, False, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if called in ("import_module", "__import__"):
                found.append((node.lineno, False, [node.args[0].value]))
    return found


def read_imports(root: Path) -> tuple[set[str], list[Import]]:
    """Every module under ``root``'s tunegate/, tasks/ and flows/ and every import between them."""
    files = _files(root)
    imports = []
    for module, path in files.items():
        for line, _, names in _imported_names(module, path):
            targets = set()
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
            imports += [Import(module, target, path, line) for target in sorted(targets)]
    return set(files), imports


def system_imports(root: Path) -> list[Import]:
    """Every raw import of an outside system (:data:`SYSTEMS`, any submodule) under ``root``'s tunegate/,
    tasks/ and flows/; ``target`` is the name imported (``mlflow.utils.rest_utils``)."""
    imports = []
    for module, path in _files(root).items():
        for line, relative, names in _imported_names(module, path):
            for name in names:
                if not relative and any(_within(name, system) for system in SYSTEMS):
                    imports.append(Import(module, name, path, line))
    return imports


def cycles(modules: set[str], imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for i in imports:
        edges[i.source].add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return found


def violations(root: Path) -> list[str]:
    modules, imports = read_imports(root)
    out = [f"import circle: {' <-> '.join(c)}" for c in cycles(modules, imports)]
    for i in imports:
        where = f"{i.file.relative_to(root)}:{i.line} imports {i.target}"
        src, dst = _stage(i.source), _stage(i.target)
        if src and dst and STAGES.index(dst) > STAGES.index(src):
            out.append(f"{where}: stage {src} imports the later stage {dst}")
        if _within(i.source, "tunegate") and not _within(i.source, "tunegate.cli") and any(_within(i.target, t) for t in TOP):
            out.append(f"{where}: the package imports the CLI, a task or a flow")
        if _within(i.target, ADAPTERS) and (
            not any(_within(i.source, m) for m in MAY_USE_ADAPTERS) or any(_within(i.source, m) for m in PURE_IN_GOVERNANCE)
        ):
            out.append(f"{where}: a module that takes and returns values imports an adapter")
        if _within(i.source, ADAPTERS) and _stage(i.target) in ("evaluation", "governance", "operations"):
            out.append(f"{where}: an adapter imports {_stage(i.target)}")
    for i in system_imports(root):
        if not any(_within(i.source, m) for m in MAY_IMPORT_SYSTEMS):
            system = i.target.split(".")[0]
            out.append(f"{i.file.relative_to(root)}:{i.line} imports {i.target}: a raw {system} import outside the adapters, "
                       "tasks, flows and the CLI (reach it through tunegate.adapters)")
    return out


def test_the_package_keeps_its_import_rules():
    assert violations(REPO) == []


def test_the_layout_is_the_stage_folders():
    top = sorted(p.name for p in (REPO / "tunegate").iterdir() if p.suffix == ".py")
    assert top == ["__init__.py", "cli.py", "params.py", "paths.py", "tags.py"]
    folders = sorted(p.name for p in (REPO / "tunegate").iterdir() if p.is_dir() and not p.name.startswith("__"))
    assert folders == sorted([*STAGES, "adapters"])
    assert not (REPO / "tunegate" / "metrics.py").exists() and not (REPO / "tunegate" / "evaluation.py").exists()


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for top in ROOTS:
        shutil.copytree(REPO / top, root / top, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _plant(root: Path, relative: str, line: str) -> None:
    path = root / relative
    path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _planted():\n    {line}\n", encoding="utf-8")


def test_a_planted_upward_import_is_caught(tmp_path):
    root = _copy(tmp_path)
    _plant(root, "tunegate/data/formats.py", "from tunegate.governance.gate import decide_promotion  # noqa")
    [found] = violations(root)
    assert found.startswith("tunegate/data/formats.py:") and "stage data imports the later stage governance" in found


def test_a_planted_adapter_import_in_a_pure_module_is_caught(tmp_path):
    root = _copy(tmp_path)
    _plant(root, "tunegate/evaluation/stats.py", "from tunegate.adapters import mlflow  # noqa")
    _plant(root, "tunegate/governance/gate.py", "import tunegate.adapters.dvc  # noqa")
    found = violations(root)
    assert len(found) == 2 and all("takes and returns values imports an adapter" in f for f in found)
    assert {f.split(":")[0] for f in found} == {"tunegate/evaluation/stats.py", "tunegate/governance/gate.py"}


def test_a_planted_circle_and_a_flow_import_are_caught(tmp_path):
    root = _copy(tmp_path)
    _plant(root, "tunegate/governance/lineage.py", "from tunegate.governance.promotion import approve  # noqa")
    _plant(root, "tunegate/operations/scheduling.py", "from flows.retrain import retrain  # noqa")
    found = violations(root)
    assert any(f.startswith("import circle:") and "tunegate.governance.lineage" in f and "tunegate.governance.promotion" in f
               for f in found), found
    assert any(f.startswith("tunegate/operations/scheduling.py:") and "imports the CLI, a task or a flow" in f for f in found)


def test_every_name_of_one_import_statement_counts(tmp_path):
    root = _copy(tmp_path)
    _plant(root, "tunegate/data/formats.py", "from tunegate.governance import gate, audit  # noqa")
    found = violations(root)
    assert len(found) == 2 and all("stage data imports the later stage governance" in f for f in found)
    assert {f.split(" imports ")[1].split(":")[0] for f in found} == {"tunegate.governance.gate", "tunegate.governance.audit"}


def test_a_planted_raw_import_of_an_outside_system_is_caught(tmp_path):
    root = _copy(tmp_path)
    _plant(root, "tunegate/governance/promotion.py", "import mlflow  # noqa")
    found = violations(root)
    assert len(found) == 1 and found[0].startswith("tunegate/governance/promotion.py:"), found
    assert "imports mlflow: a raw mlflow import outside the adapters" in found[0]


def test_raw_imports_are_caught_in_every_form_and_allowed_only_where_they_belong(tmp_path):
    root = _copy(tmp_path)
    _plant(root, "tunegate/operations/status.py", "from prefect.client.schemas.objects import StateType  # noqa")
    _plant(root, "tunegate/evaluation/stats.py", "import dvc.repo  # noqa")
    _plant(root, "tunegate/governance/identity.py", "__import__('importlib').import_module('mlflow.utils.rest_utils')")
    _plant(root, "tunegate/adapters/git.py", "import dvc.api  # noqa")  # the adapters, tasks, flows and the CLI may
    _plant(root, "tasks/common.py", "import mlflow  # noqa")
    _plant(root, "tunegate/cli.py", "from prefect import serve  # noqa")
    found = violations(root)
    assert {f.split(" imports ")[0].split(":")[0] for f in found} == {
        "tunegate/operations/status.py", "tunegate/evaluation/stats.py", "tunegate/governance/identity.py"}, found
    assert {f.split(" imports ")[1].split(":")[0] for f in found} == {
        "prefect.client.schemas.objects.StateType", "dvc.repo", "mlflow.utils.rest_utils"}
