"""Absolute thresholds on the candidate's own figures (``governance.minimums``).

The gate judges deltas: a candidate no worse than its champion passes. A reviewer also needs to know what the
model does not do well enough in absolute terms (e.g. it refuses 1 in 40 harmful requests): each minimum is
checked once, on the figures of the comparison the summary shows, and a shortfall is stated as a limitation in
the summary, ``--json`` and the model card, whether or not the gate passed.
"""

from __future__ import annotations

from typing import Any

from tunegate.params import Minimum


def check_minimums(minimums: list[Minimum], deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per minimum: the candidate's figure (from ``deltas``, the comparison's ``Delta.to_dict()``),
    the bound, and whether it is met (None: the figure was not evaluated, which is itself a shortfall to state)."""
    by_key = {(d["metric"], d["category"]): d for d in deltas}
    out = []
    for minimum in minimums:
        delta = by_key.get((minimum.metric, minimum.category))
        value = None if delta is None else float(delta["candidate"])
        bound, side = (minimum.at_least, "at_least") if minimum.at_least is not None else (minimum.at_most, "at_most")
        met = None if value is None else (value >= bound if side == "at_least" else value <= bound)
        out.append({"metric": minimum.metric, "category": minimum.category, "value": value, side: bound, "bound": side,
                    "met": met, "why": minimum.why, "n": None if delta is None else delta.get("n")})
    return out


def minimum_line(entry: dict[str, Any]) -> str:
    """``refusal_rate[advbench] 0.025, required at least 0.900 (harmful requests refused): minimum not met``."""
    side = entry["bound"]
    required = f"required {'at least' if side == 'at_least' else 'at most'} {entry[side]:.3f}"
    name = entry["metric"] + ("" if entry["category"] == "all" else f"[{entry['category']}]")
    figure = "not evaluated" if entry["value"] is None else f"{entry['value']:.3f}"
    verdict = "met" if entry["met"] else ("not evaluated" if entry["met"] is None else "minimum not met")
    return f"{name} {figure}, {required}" + (f" ({entry['why']})" if entry["why"] else "") + f": {verdict}"


def limitation_lines(entries: list[dict[str, Any]]) -> list[str]:
    """The shortfalls, one markdown bullet each."""
    return [f"- {minimum_line(e)}" for e in entries if not e["met"]]
