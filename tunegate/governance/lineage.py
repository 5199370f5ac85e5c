"""Lineage of a registered version, from the registry, its training run and the audit trail."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tunegate import tags
from tunegate.adapters import mlflow as tracking
from tunegate.governance import audit
from tunegate.evaluation.stats import percent
from tunegate.governance.gate import verdict_cell


def build_lineage(name: str, version: str) -> dict[str, Any]:
    return _lineage(name, version)[0]


def _lineage(name: str, version: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The lineage chain and the training run's summary it was built from."""
    try:
        ref = tracking.get_version(name, version)
    except Exception:
        raise LookupError(f"{name} has no version {version}") from None
    run = tracking.get_run(ref.run_id)
    run_tags, params = run.data.tags, run.data.params
    summary = tracking.load_artifact_json(ref.run_id, "summary/summary.json") or {}
    gate = tracking.load_artifact_json(ref.run_id, "gate/decision.json") or {}
    validation = tracking.load_artifact_json(ref.run_id, "validation/report.json") or []
    approvals = {
        key.removeprefix(tags.APPROVAL_PREFIX): json.loads(value)
        for key, value in ref.tags.items()
        if key.startswith(tags.APPROVAL_PREFIX)
    }
    entries = audit.store().entries()  # read once: the alias history and the run's events come from it
    history = [
        h for h in alias_moves([e for e in entries if audit.model_of(e) == name])
        if h["version"] == version or any(version in (m["from"], m["to"]) for m in h["moves"])
    ]
    run_events = [e for e in entries if e["data"].get("run_id") == ref.run_id]
    aliases = sorted(a for a, v in (tracking.client().get_registered_model(name).aliases or {}).items() if str(v) == str(version))
    chain = {
        "model": name,
        "version": version,
        "aliases": aliases,
        "data": {
            "data_md5": run_tags.get(tags.DATA_MD5),
            "sources": {k.removeprefix(tags.SOURCE_MD5_PREFIX): v for k, v in run_tags.items() if k.startswith(tags.SOURCE_MD5_PREFIX)},
            "canonical_train_md5": run_tags.get(tags.CANONICAL_TRAIN_MD5),
            "canonical_eval_md5": run_tags.get(tags.CANONICAL_EVAL_MD5),
        },
        "validation": {
            "status": run_tags.get(tags.VALIDATION),
            "report": f"runs:/{ref.run_id}/validation/report.md",
            "failed_rules": [r["rule"] for rep in validation for r in rep.get("rules", []) if not r["passed"]],
        },
        "training": {
            "run_id": ref.run_id,
            "commit": run_tags.get("mlflow.source.git.commit"),
            "git_dirty": run_tags.get(tags.GIT_DIRTY),
            "initiator": run_tags.get(tags.INITIATOR),
            "initiator_authenticated": run_tags.get(tags.INITIATOR_AUTHENTICATED) == "true",
            "params_file": run_tags.get(tags.PARAMS_FILE),
            "method": params.get("train.method"),
            "base_model": params.get("model.base_model"),
            "final_loss": run.data.metrics.get("train_final_loss"),
        },
        "evaluation": {
            "baseline": {"source": run_tags.get(tags.BASELINE_SOURCE), "version": run_tags.get(tags.BASELINE_VERSION) or None},
            "deltas": [d for d in (summary.get("evaluation") or {}).get("deltas", []) if d["category"] == "all"],
            "report": f"runs:/{ref.run_id}/report/evaluation.html",
            # the frozen eval and benchmark files' md5 (capability tasks' files included), and who judged how
            "eval_md5": {k.removeprefix(tags.EVAL_MD5_PREFIX): v for k, v in sorted(run_tags.items()) if k.startswith(tags.EVAL_MD5_PREFIX)},
            "judge": {k.removeprefix(tags.JUDGE_PREFIX): v for k, v in sorted(run_tags.items()) if k.startswith(tags.JUDGE_PREFIX)},
        },
        "gate": {"passed": gate.get("passed"), "reasons": gate.get("reasons", []), "checks": gate.get("checks", [])},
        "preference": _preference_lineage(ref, run_tags, run.data.metrics, summary.get("preference")),
        "approvals": approvals,
        "history": history,
        "run_events": [{"seq": e["seq"], "event": e["event"], "time": e["time"]} for e in run_events],
        # aliases moved outside tunegate: this version's approvals and history do not explain them
        "alias_drift": [d.message() for d in alias_drift(name, [e for e in entries if audit.model_of(e) == name])
                        if version in (d.registry, d.audited)],
    }
    return chain, summary


def _preference_lineage(ref, run_tags: dict[str, str], metrics: dict[str, float], summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run that tuned twice (train.objective dpo): which of its two models this version is, what the preference
    stage started from (its parent, the DPO reference), both stages' data md5s and the DPO model's verdicts."""
    if not summary:
        return None
    held = ((summary.get("comparisons") or {}).get("parent") or {}).get("held_out") or {}
    return {
        "stage": ref.tags.get(tags.REGISTERED_STAGE) or summary.get("stage"),
        "objective": summary.get("objective"),
        "parent": summary.get("parent"),
        "reference": run_tags.get(tags.REFERENCE),
        "reference_check": (summary.get("reference") or {}).get("check"),
        "train_md5": run_tags.get(tags.PREFERENCE_TRAIN_MD5),
        "eval_md5": run_tags.get(tags.PREFERENCE_EVAL_MD5),
        "sources": {k.removeprefix(tags.PREFERENCE_SOURCE_MD5_PREFIX): v for k, v in run_tags.items()
                    if k.startswith(tags.PREFERENCE_SOURCE_MD5_PREFIX)},
        "dpo_final_loss": metrics.get("dpo_final_loss"),
        "held_out": held,
        "dpo_gate": {"passed": (summary.get("gate") or {}).get("passed"), "reasons": (summary.get("gate") or {}).get("reasons", [])},
        "why": summary.get("why"),
    }


def _preference_lines(p: dict[str, Any] | None, indent: str = "   ") -> list[str]:
    if not p:
        return []
    parent = p.get("parent") or {}
    check = p.get("reference_check") or {}
    held = p.get("held_out") or {}
    lines = [
        f"{indent}this version is the run's {'DPO model' if p['stage'] == 'preference' else 'SFT model (the DPO model was refused)'}",
        f"{indent}preference stage ({p['objective']}) from {parent.get('label')}"
        + (f" ({parent['model_uri']})" if parent.get("model_uri") else "") + f"; reference {p.get('reference')}"
        + (f", checked equal before the first step (max log-prob difference {check['max_abs_logp_difference']:.2g})" if check else ""),
        f"{indent}preference data md5 train {p.get('train_md5')}, held out {p.get('eval_md5')}",
        *[f"{indent}preference source {name}: {md5}" for name, md5 in (p.get("sources") or {}).items()],
        f"{indent}DPO final loss {p.get('dpo_final_loss')}"
        + (f"; held-out implicit-reward accuracy {held['accuracy']:.3f} [{held['low']:.3f}, {held['high']:.3f}] over {held['pairs']} pairs"
           if held.get("accuracy") is not None else ""),
        f"{indent}DPO model's gate: {'passed' if p['dpo_gate']['passed'] else 'FAILED'}; {p.get('why')}",
    ]
    return lines


def render_lineage(chain: dict[str, Any]) -> str:
    d, v, t, e, g = chain["data"], chain["validation"], chain["training"], chain["evaluation"], chain["gate"]
    lines = [
        f"{chain['model']} version {chain['version']}  aliases: {', '.join(chain['aliases']) or '-'}",
        *[f"WARNING: {message}" for message in chain.get("alias_drift", [])],
        "",
        "1. data",
        f"   dataset md5 {d['data_md5']}  (canonical train {d['canonical_train_md5']}, eval {d['canonical_eval_md5']})",
        *[f"   source {name}: {md5}" for name, md5 in d["sources"].items()],
        "2. validation",
        f"   {v['status']}  report {v['report']}" + (f"  warnings/drops: {', '.join(v['failed_rules'])}" if v["failed_rules"] else ""),
        "3. training",
        f"   run {t['run_id']}  commit {t['commit']}{' (dirty)' if t['git_dirty'] == 'true' else ''}  by {t['initiator']}{'' if t.get('initiator_authenticated') else ' (not authenticated)'}",
        f"   params {t['params_file']}  method {t['method']}  base {t['base_model']}  final loss {t['final_loss']}",
        *_preference_lines(chain.get("preference")),
        "4. evaluation vs " + (f"champion version {e['baseline']['version']}" if e["baseline"]["source"] == "champion" else "the base model"),
        *[f"   {x['metric']}: {x['baseline']:.3f} -> {x['candidate']:.3f} ({x['delta']:+.3f}, [{x['low']:+.3f}, {x['high']:+.3f}])" for x in e["deltas"]],
        *[f"   eval file {name}: md5 {md5}" for name, md5 in e.get("eval_md5", {}).items()],
        *([f"   judge: {', '.join(f'{k} {v}' for k, v in e['judge'].items())}"] if e.get("judge") else []),
        f"   report {e['report']}",
        "5. gate: " + ("passed" if g["passed"] else "FAILED"),
        *[f"   {r}" for r in g["reasons"]],
        "6. approvals",
        *([f"   {who}: roles {', '.join(a['roles'])}; {a['reason']!r} ({_authenticity(a)})" for who, a in chain["approvals"].items()] or ["   none"]),
        "7. alias history",
        *([f"   {line}" for line in history_lines(chain["history"])] or ["   none"]),
    ]
    return "\n".join(lines)


def _authenticity(approval: dict[str, Any]) -> str:
    said = "authenticated by the MLflow server" if approval.get("authenticated") else f"not authenticated: environment user {approval.get('env_user')}"
    return said + (", signed" if approval.get("signed") else "")


def _moves_text(moves: list[dict[str, Any]]) -> str:
    return ", ".join(f"{m['alias']} {m['from'] or '-'} -> {m['to'] or '-'}" for m in moves)


def history_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per alias move: when, what moved, who (authenticated or not), why."""
    return [
        f"#{h['seq']} {h['time'][:19]} {h['event']}: {_moves_text(h['moves'])}; by {h['actor']}"
        f" ({'authenticated' if h['authenticated'] else 'not authenticated'}); why: {h['reason'] or '-'}"
        for h in rows
    ]


def render_history(name: str, rows: list[dict[str, Any]], alias: str | None = None) -> str:
    head = f"alias history of {name}" + (f" (alias {alias})" if alias else "") + f": {len(rows)} move(s)"
    return "\n".join([head, *(f"  {line}" for line in history_lines(rows))])


def _level(deltas: list[dict[str, Any]]) -> str:
    """The intervals' confidence, as the card's table header shows it."""
    return percent(next((d["confidence"] for d in deltas if "confidence" in d), 0.95))


def _judge_lines(judged: dict[str, Any] | None) -> list[str]:
    """Who judged the candidate against the baseline and how, and the win rate (the figures the run's summary holds)."""
    if not judged:
        return []
    who = judged["judge"]
    line = (f"- judge: `{who.get('kind')}` `{who.get('model') or who.get('path')}`"
            + (f" at `{who['base_url']}`" if who.get("base_url") else "")
            + (f" (files sha256 `{who['files_sha256'][:16]}`)" if who.get("files_sha256") else "")
            + f"; prompt sha256 `{judged['prompt_sha256'][:16]}`; decoding {judged['decoding']}")
    if judged.get("failed"):
        return [line, f"- judge suite failed: {judged['failed']}", ""]
    counts = judged["counts"]
    return [line, f"- judge win rate {judged['win_rate']:.3f} [{judged['low']:.3f}, {judged['high']:.3f}] over {judged['n']} pairs: "
            f"{counts['win']} won, {counts['tie']} tied ({counts['inconsistent']} inconsistent), {counts['loss']} lost; "
            f"the candidate's answers {judged['length_difference_chars']:+.0f} characters longer on average", ""]


def _limitations_section(minimums: list[dict[str, Any]] | None) -> list[str]:
    """The absolute thresholds (governance.minimums) as the run's summary checked them: shortfalls first, stated as
    limitations whether or not the gate passed (a regression is only "worse than the baseline")."""
    if not minimums:
        return []
    from tunegate.governance.minimums import limitation_lines, minimum_line

    return ["", "## Limitations (absolute minimums)",
            *(limitation_lines(minimums) or ["- every minimum is met"]),
            "", "| minimum | verdict |", "|---|---|",
            *[f"| {minimum_line(m).rsplit(': ', 1)[0]} | {minimum_line(m).rsplit(': ', 1)[1]} |" for m in minimums]]


def render_model_card(chain: dict[str, Any], summary: dict[str, Any] | None = None) -> str:
    """A markdown model card for one registered version."""
    d, t, e, g = chain["data"], chain["training"], chain["evaluation"], chain["gate"]
    data = (summary or {}).get("data", {})
    regressions = [x for x in e["deltas"] if x.get("regression")]
    lines = [
        f"# Model card: {chain['model']} version {chain['version']}",
        "",
        *[f"> **Warning:** {message}\n" for message in chain.get("alias_drift", [])],
        "## Intended use",
        "An instruction-following assistant tuned by tunegate. Use within the scope of its training data; "
        "it is not evaluated for uses outside the suites below.",
        "",
        "## Base model and training",
        f"- base model: `{t['base_model']}`, method `{t['method']}`, final training loss {t['final_loss']}",
        f"- training run `{t['run_id']}`, commit `{t['commit']}`, params `{t['params_file']}`, started by {t['initiator']}{'' if t.get('initiator_authenticated') else ' (not authenticated)'}",
        "",
        "## Data",
        f"- dataset md5 `{d['data_md5']}`; {data.get('n_train', '?')} train / {data.get('n_eval', '?')} eval records",
        *[f"- source `{name}`: md5 `{md5}`" for name, md5 in d["sources"].items()],
        "",
        *((["## Preference tuning", *_preference_lines(chain["preference"], "- "), ""]) if chain.get("preference") else []),
        "## Evaluation vs " + (f"champion version {e['baseline']['version']}" if e["baseline"]["source"] == "champion" else "the base model"),
        "",
        f"| metric | baseline | candidate | delta | {_level(e['deltas'])} interval | gate |",
        "|---|---:|---:|---:|---|---|",
        *[f"| {x['metric']} | {x['baseline']:.3f} | {x['candidate']:.3f} | {x['delta']:+.3f} | [{x['low']:+.3f}, {x['high']:+.3f}] | "
          f"{verdict_cell(g.get('checks', []), x['metric'])} |" for x in e["deltas"]],
        "",
        *_judge_lines(((summary or {}).get("candidate") or {}).get("metrics", {}).get("judge")),
        "## Gate decision: " + ("passed" if g["passed"] else "failed"),
        *[f"- {r}" for r in g["reasons"]],
        "",
        "## Approvals",
        *([f"- {who} ({', '.join(a['roles'])}; {_authenticity(a)}): {a['reason']}" for who, a in chain["approvals"].items()] or ["- none yet"]),
        "",
        "## Alias history",
        "",
        "| # | time (UTC) | event | moves | by | authenticated | why |",
        "|---:|---|---|---|---|---|---|",
        *[f"| {h['seq']} | {h['time'][:19]} | {h['event']} | {_moves_text(h['moves'])} | {h['actor']} | {'yes' if h['authenticated'] else 'no'} | {h['reason'] or '-'} |" for h in chain["history"]],
        "",
        "## Known regressions",
        *([f"- {x['metric']}: {x['delta']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]" for x in regressions] or ["- none flagged (no interval excludes zero on the wrong side)"]),
        *_limitations_section((summary or {}).get("minimums")),
    ]
    return "\n".join(lines) + "\n"


def publish_model_card(name: str, version: str) -> str:
    """(Re)write the card from the current lineage: run artifact and the version's description."""
    chain, summary = _lineage(name, version)
    card = render_model_card(chain, summary)
    tracking.log_text(chain["training"]["run_id"], card, f"model_card/version_{version}.md")
    tracking.client().update_model_version(name, version, description=card)
    return card


# --- reading the trail -----------------------------------------------------------------------------


def alias_history(name: str, alias: str | None = None) -> list[dict[str, Any]]:
    """Every alias move of model ``name`` (one row per action), oldest first, from the audit table."""
    return alias_moves(audit.store().entries(model=name), alias)


def alias_moves(entries: list[dict[str, Any]], alias: str | None = None) -> list[dict[str, Any]]:
    """The alias-moving entries among ``entries`` (of one model), one row per action, in their order."""
    rows = []
    for entry in entries:
        moves = entry["data"].get("moves")
        if not moves:
            continue
        if alias is not None:
            moves = [m for m in moves if m["alias"] == alias]
            if not moves:
                continue
        rows.append({
            "seq": entry["seq"], "time": entry["time"], "event": entry["event"], "version": entry["data"].get("version"),
            "moves": moves, "actor": entry["actor"], "authenticated": bool(entry.get("authenticated")),
            "reason": entry["data"].get("reason"), "approvers": entry["data"].get("approvers"),
        })
    return rows


# --- aliases moved outside tunegate ----------------------------------------------------------------

MANAGED_ALIASES = (tracking.CHAMPION, tracking.CANDIDATE, tracking.PREVIOUS)  # the aliases only tunegate moves


@dataclass(frozen=True)
class AliasDrift:
    """An alias whose version in the registry is not where the last audited move of it put it
    (the MLflow UI's alias pencil, a script with the MLflow client, a deleted alias)."""

    model: str
    alias: str
    registry: str | None  # the version the registry's alias points at now; None: the alias is gone
    audited: str | None  # where the audit trail's last move of it put it; None: never set, or removed
    last_move: dict[str, Any] | None  # that move: seq, time, event, actor
    seen_outside: dict[str, Any] | None = None  # the webhook's record of the outside move (seq, time), if any

    def message(self) -> str:
        now = f"version {self.registry}" if self.registry else "no version (removed)"
        if self.last_move:
            m = self.last_move
            to = f"version {self.audited}" if self.audited else "removed"
            last = f"{self.alias} -> {to}, {m['event']} by {m['actor']} at {m['time']}, audit entry {m['seq']}"
        else:
            last = "none"
        seen = (f"; the MLflow server reported the outside move at {self.seen_outside['time']}, audit entry {self.seen_outside['seq']}"
                if self.seen_outside else "")
        return f"alias {self.alias} -> {now} was not set by tunegate (last audited move: {last}{seen})"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "alias": self.alias, "registry": self.registry, "audited": self.audited,
                "last_move": self.last_move, "seen_outside": self.seen_outside, "message": self.message()}


def audited_aliases(entries: list[dict[str, Any]]) -> dict[str, tuple[str | None, dict[str, Any]]]:
    """alias -> (version, move) as the alias-moving entries among ``entries`` (one model's) leave it."""
    state: dict[str, tuple[str | None, dict[str, Any]]] = {}
    for row in alias_moves(entries):
        for move in row["moves"]:
            to = str(move["to"]) if move.get("to") is not None else None
            state[move["alias"]] = (to, {k: row[k] for k in ("seq", "time", "event", "actor")})
    return state


def alias_drift(name: str, entries: list[dict[str, Any]] | None = None) -> list[AliasDrift]:
    """tunegate's aliases of model ``name`` whose registry version differs from the audit trail's record
    (``entries``: the model's audit entries, read when not given). A model the registry does not know: none."""
    try:
        registry = tracking.aliases(name)
    except Exception:
        return []
    entries = entries if entries is not None else audit.store().entries(model=name)
    audited = audited_aliases(entries)
    drifts = []
    for alias in MANAGED_ALIASES:
        version, move = audited.get(alias, (None, None))
        if registry.get(alias) != version:
            seen = [e for e in entries if e["event"] == "alias_moved_outside" and e["data"].get("alias") == alias
                    and e["data"].get("version") == registry.get(alias) and (move is None or e["seq"] > move["seq"])]
            drifts.append(AliasDrift(name, alias, registry.get(alias), version, move,
                                     {"seq": seen[-1]["seq"], "time": seen[-1]["time"]} if seen else None))
    return drifts
