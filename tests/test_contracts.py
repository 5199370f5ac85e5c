"""What passes between stages is typed (issue #25): no ``dict[str, Any]`` in a task's or the flow's
signature, and the flow branches once on the gate's decision, by its action."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _signatures(path: Path) -> list[tuple[str, int, str]]:
    """(function, line, annotation source) of every parameter and return annotation in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None and arg.annotation is not None:
                    found.append((node.name, arg.lineno, ast.unparse(arg.annotation)))
            if node.returns is not None:
                found.append((node.name, node.lineno, ast.unparse(node.returns)))
    return found


def untyped_dicts(root: Path) -> list[str]:
    bad = []
    for top in ("tasks", "flows"):
        for path in sorted((root / top).rglob("*.py")):
            for name, line, annotation in _signatures(path):
                compact = annotation.replace(" ", "")
                if "dict[str,Any]" in compact or compact in ("dict", "Dict") or "Dict[str,Any]" in compact:
                    bad.append(f"{path.relative_to(root)}:{line} {name}: {annotation}")
    return bad


def test_no_untyped_dict_in_task_or_flow_signatures():
    assert untyped_dicts(REPO) == []


def test_the_rule_finds_a_planted_untyped_signature(tmp_path):
    for top in ("tasks", "flows"):
        (tmp_path / top).mkdir()
    (tmp_path / "tasks" / "planted.py").write_text("from typing import Any\n\ndef f(x: dict[str, Any]) -> int:\n    return 0\n")
    assert untyped_dicts(tmp_path) == ["tasks/planted.py:3 f: dict[str, Any]"]


def test_the_flow_branches_once_on_the_decisions_action():
    tree = ast.parse((REPO / "flows" / "retrain.py").read_text(encoding="utf-8"))
    matches = [n for n in ast.walk(tree) if isinstance(n, ast.Match)]
    assert len(matches) == 1 and ast.unparse(matches[0].subject) == "decision.action"
    cases = {ast.unparse(c.pattern) for c in matches[0].cases}
    assert cases == {"'register'", "'keep_waiting'", "'reject'"}
    # Nothing else in the flow reads the decision: no `decision["passed"]`, `decision.passed` or `.waiting` branch.
    reads = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Attribute, ast.Subscript))
             and ast.unparse(n).startswith("decision") and ast.unparse(n) != "decision.action"]
    assert reads == []
    from typing import get_args

    from tunegate.governance.gate import Action

    assert set(get_args(Action)) == {c.strip("'") for c in cases}
