"""The MLflow tag names live in one module of constants (tunegate.tags): no other module under tunegate/,
tasks/ or flows/ spells a ``"tunegate.<name>"`` tag in a string (plain or the literal start of an f-string)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tunegate import tags

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("tunegate", "tasks", "flows")
# "tunegate.<x>" strings that are not MLflow tags: module paths, and the Prefect data events' names, labels and ids.
NOT_TAGS = re.compile(r"tunegate\.(adapters|cli|data|evaluation|governance|operations|params|paths|tags|tuning|md5|dataset)(\.|$)")


def _literal_tags(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.JoinedStr):
            first = node.values[0] if node.values else None
            text = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ""
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if re.fullmatch(r"tunegate\.[a-z_][a-z0-9_.]*", text) and not NOT_TAGS.match(text):
            found.append((node.lineno, text))
    return sorted(set(found))  # an f-string's first part is a string of its own too


def tag_literals(root: Path) -> dict[str, list[tuple[int, str]]]:
    """File -> (line, string) of every tag name spelled outside tunegate/tags.py."""
    out = {}
    for top in ROOTS:
        for path in sorted((root / top).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if relative != "tunegate/tags.py" and (found := _literal_tags(path)):
                out[relative] = found
    return out


def test_tag_names_are_spelled_only_in_tunegate_tags():
    spelled = tag_literals(REPO)
    assert spelled == {}


def test_the_tag_names_are_distinct_and_tunegates():
    names = {k: v for k, v in vars(tags).items() if k.isupper()}
    assert len(set(names.values())) == len(names)
    assert all(re.fullmatch(r"tunegate(\.[a-z_0-9]+)+\.?", v) for v in names.values()), names
    assert all(k.endswith("_PREFIX") == v.endswith(".") for k, v in names.items())


def test_a_planted_tag_literal_is_caught(tmp_path):
    planted = tmp_path / "tunegate" / "governance" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text('import tunegate.governance.audit\nSTATE = "tunegate.state"\nAPPROVAL = f"tunegate.approval.{1}"\n'
                       'EVENT = "tunegate.data.added"\n')
    assert tag_literals(tmp_path) == {"tunegate/governance/planted.py": [(2, "tunegate.state"), (3, "tunegate.approval.")]}
