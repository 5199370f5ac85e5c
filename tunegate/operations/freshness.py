"""Skip when unchanged: has a model already been trained from exactly these inputs?

A run's inputs are its data md5s (the dataset's and every source file's; with a preference stage also its
pairs' and every pair file's), the
fingerprint of its params (``Params.fingerprint``: everything but the schedule)
and the code it ran (``gitinfo.code_fingerprint``). They are tags on every
MLflow run; an unattended run compares its own with those of the champion's
training run and of a candidate still waiting for approval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunegate import tags as tag_names

SOURCE_PREFIX = tag_names.SOURCE_MD5_PREFIX
PREFERENCE = "preference:"  # a preference source's key among the sources (train.objective dpo)


def preference_sources(train_md5: str, sources: dict[str, str]) -> dict[str, str]:
    """The preference stage's inputs under ``sources``' keys: its canonical pairs' md5 and each pair file's."""
    return {f"{PREFERENCE}pairs": train_md5, **{f"{PREFERENCE}{name}": md5 for name, md5 in sources.items()}}


def short_code(code: str) -> str:
    """``abc123def456`` or ``abc123def456+dirty.0f1e2d3c`` for a code fingerprint."""
    commit, _, dirty = code.partition("+dirty.")
    return commit[:12] + (f"+dirty.{dirty[:8]}" if dirty else "")


@dataclass(frozen=True)
class RunInputs:
    data_md5: str
    params_sha256: str
    code: str
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> RunInputs | None:
        """The inputs recorded on a run; None for a run that predates the tags."""
        needed = (tag_names.DATA_MD5, tag_names.PARAMS_SHA256, tag_names.CODE_FINGERPRINT)
        if not all(tags.get(key) for key in needed):
            return None
        sources = {k.removeprefix(SOURCE_PREFIX): v for k, v in tags.items() if k.startswith(SOURCE_PREFIX)}
        if tags.get(tag_names.PREFERENCE_TRAIN_MD5):  # a run that tuned on preference pairs too
            pairs = {k.removeprefix(tag_names.PREFERENCE_SOURCE_MD5_PREFIX): v for k, v in tags.items()
                     if k.startswith(tag_names.PREFERENCE_SOURCE_MD5_PREFIX)}
            sources.update(preference_sources(tags[tag_names.PREFERENCE_TRAIN_MD5], pairs))
        return cls(tags[tag_names.DATA_MD5], tags[tag_names.PARAMS_SHA256], tags[tag_names.CODE_FINGERPRINT], sources)

    def differences(self, other: RunInputs) -> list[str]:
        """What differs, in words; empty when the inputs are the same."""
        out = []
        if self.data_md5 != other.data_md5:
            out.append(f"data md5 {other.data_md5[:12]} -> {self.data_md5[:12]}")
        for name in sorted(set(self.sources) | set(other.sources)):
            if self.sources.get(name) != other.sources.get(name):
                out.append(f"source {name}: {(other.sources.get(name) or 'none')[:12]} -> {(self.sources.get(name) or 'none')[:12]}")
        if self.params_sha256 != other.params_sha256:
            out.append("params changed")
        if self.code != other.code:
            out.append(f"code {short_code(other.code)} -> {short_code(self.code)}")
        return out


@dataclass(frozen=True)
class Reference:
    """A model an unattended run may already have: the champion or a candidate waiting for approval."""

    role: str  # "champion" | "candidate"
    version: str
    run_id: str | None
    inputs: RunInputs | None


@dataclass(frozen=True)
class FreshnessCheck:
    skip: bool
    reason: str
    matched: Reference | None = None
    changes: dict[str, list[str]] = field(default_factory=dict)  # reference role -> what differs

    def to_dict(self) -> dict[str, Any]:
        matched = None
        if self.matched:
            matched = {"role": self.matched.role, "version": self.matched.version, "run_id": self.matched.run_id}
        return {"skip": self.skip, "reason": self.reason, "matched": matched, "changes": self.changes}


def check(current: RunInputs, references: list[Reference], *, unattended: bool, force: bool) -> FreshnessCheck:
    """Decide whether a run has anything to do.

    Only unattended (scheduled or triggered) runs skip; a forced run or one a person
    started by hand always trains.
    """
    if force:
        return FreshnessCheck(False, "forced: the unchanged-inputs check was skipped")
    if not unattended:
        return FreshnessCheck(False, "started by hand: always trains")
    changes: dict[str, list[str]] = {}
    for ref in references:
        if ref.inputs is None:
            changes[ref.role] = [f"version {ref.version} has no recorded inputs"]
            continue
        diff = current.differences(ref.inputs)
        if not diff:
            waiting = " (still waiting for approval)" if ref.role == "candidate" else ""
            return FreshnessCheck(
                True,
                f"nothing to do: data, params and code equal those of {ref.role} version {ref.version}{waiting}",
                ref,
                changes,
            )
        changes[ref.role] = diff
    if not references:
        return FreshnessCheck(False, "no champion or candidate yet: a first model is trained", None, changes)
    said = "; ".join(f"vs {role}: {', '.join(diff)}" for role, diff in changes.items())
    return FreshnessCheck(False, f"inputs changed ({said})", None, changes)
