"""Promotion on MLflow registry aliases: approve, reject, rollback — with separation of duties,
role-based approvals, compare-and-set against the champion a candidate was evaluated against,
and an audit entry for every step.

States of a version: registered with alias ``candidate`` (gate passed) -> approvals recorded
as version tags -> when the policy's roles are covered, ``champion`` moves to it and the old
champion keeps ``previous``. A rejected or superseded candidate never becomes champion.
Registry moves happen under an exclusive lock, so two racing approvals leave one champion.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate import audit, tracking
from tunegate.audit import environment_user
from tunegate.params import ApprovalPolicy

PREVIOUS = "previous"


class PromotionError(RuntimeError):
    """A promotion step the policy or the registry's state does not allow; nothing was changed."""


@dataclass(frozen=True)
class Outcome:
    action: str  # "promoted" | "approval_recorded" | "rejected" | "rolled_back"
    version: str
    message: str
    champion: str | None


def audit_log() -> Path:
    """``$TUNEGATE_AUDIT_DIR/events.jsonl``; default ``$TUNEGATE_HOME/audit``. In a multi-user deployment
    every process that records (workers, the host where people approve) points it at one shared directory."""
    from tunegate.paths import tunegate_home

    shared = os.environ.get("TUNEGATE_AUDIT_DIR")
    return (Path(shared) if shared else tunegate_home() / "audit") / "events.jsonl"


def record(event: str, data: dict[str, Any], actor: str | None = None, model_name: str | None = None, commit: str | None = None) -> dict[str, Any]:
    """Append an audit event; when the model is registered, its tag ``tunegate.audit_head`` is the new head."""
    entry = audit.append_event(audit_log(), event, data, actor=actor, commit=commit)
    if model_name:
        with contextlib.suppress(Exception):  # before the first registration there is no model to tag
            tracking.client().set_registered_model_tag(model_name, "tunegate.audit_head", f"{entry['seq']}:{entry['hash']}")
    return entry


@contextlib.contextmanager
def registry_lock():
    """Exclusive lock around read-check-move of aliases (all writers on this machine/home)."""
    import fcntl

    path = audit_log().with_name("registry.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reviewer_roles(policy: ApprovalPolicy, reviewer: str) -> list[str]:
    if not policy.reviewers:
        return ["any"]
    if reviewer not in policy.reviewers:
        raise PromotionError(f"{reviewer!r} is not on the approvers' allow-list ({', '.join(sorted(policy.reviewers))})")
    return list(policy.reviewers[reviewer])


def missing_roles(policy: ApprovalPolicy, approvals: dict[str, list[str]]) -> list[str]:
    """Required roles not yet covered; each reviewer counts once, for one role (greedy, scarcest first)."""
    used: set[str] = set()
    missing = []
    for requirement in sorted(policy.required, key=lambda r: r.role == "any"):
        for _ in range(requirement.count):
            match = next(
                (name for name, roles in sorted(approvals.items())
                 if name not in used and (requirement.role == "any" or requirement.role in roles)),
                None,
            )
            if match is None:
                missing.append(requirement.role)
            else:
                used.add(match)
    return missing


def approvals_of(ref: tracking.VersionRef) -> dict[str, list[str]]:
    return {
        key.removeprefix("tunegate.approval."): json.loads(value)["roles"]
        for key, value in ref.tags.items()
        if key.startswith("tunegate.approval.")
    }


def _champion_version(name: str) -> str | None:
    ref = tracking.alias_version(name, tracking.CHAMPION)
    return ref.version if ref else None


def approve(name: str, version: str, reviewer: str, reason: str, policy: ApprovalPolicy) -> Outcome:
    """Record an approval; promote when the policy's roles are covered. Raises PromotionError, changing nothing."""
    if not reviewer.strip() or not reason.strip():
        raise PromotionError("a reviewer and a reason are required")
    env_user = environment_user()
    with registry_lock():
        try:
            ref = tracking.get_version(name, version)
        except Exception:
            raise PromotionError(f"{name} has no version {version}") from None
        try:
            _check_candidate(name, ref)
            roles = reviewer_roles(policy, reviewer)
            initiator = ref.tags.get("tunegate.initiator", "")
            if reviewer == initiator and not policy.allow_self_approval:
                raise PromotionError(f"{reviewer!r} started the run that produced version {version} and may not approve it (separation of duties)")
            expected = ref.tags.get("tunegate.baseline_version", "")
            current = _champion_version(name) or ""
            if expected != current:
                raise PromotionError(
                    f"version {version} was evaluated against champion {expected or 'none (base model)'}, but the champion is now "
                    f"{current or 'none'}: re-evaluate it with a new run"
                )
        except PromotionError as error:
            record("approval_refused", {"model": name, "version": version, "reviewer": reviewer, "env_user": env_user, "reason": reason, "why": str(error)}, actor=reviewer, model_name=name)
            raise
        approval = {"roles": roles, "reason": reason, "env_user": env_user, "identity_matches_env": reviewer == env_user}
        tracking.set_version_tag(name, version, f"tunegate.approval.{reviewer}", json.dumps(approval))
        approvals = approvals_of(tracking.get_version(name, version))
        record("approval", {"model": name, "version": version, "reviewer": reviewer, **approval}, actor=reviewer, model_name=name)
        missing = missing_roles(policy, approvals)
        if missing:
            return Outcome("approval_recorded", version, f"approval by {reviewer} recorded; still needed: {', '.join(missing)}", current or None)
        previous = current or None
        tracking.set_alias(name, tracking.CHAMPION, version)
        if previous:
            tracking.set_alias(name, PREVIOUS, previous)
        tracking.remove_alias(name, tracking.CANDIDATE)
        tracking.set_version_tag(name, version, "tunegate.state", "champion")
        if previous:
            tracking.set_version_tag(name, previous, "tunegate.state", "previous")
        entry = record("alias_moved", {"model": name, "champion": version, "previous": previous, "approvers": sorted(approvals)}, actor=reviewer, model_name=name)
        tracking.set_version_tag(name, version, "tunegate.audit_head", f"{entry['seq']}:{entry['hash']}")
        from tunegate.lineage import publish_model_card

        with contextlib.suppress(Exception):  # the card is a view; the promotion itself is done
            publish_model_card(name, version)
        return Outcome("promoted", version, f"champion -> version {version}" + (f" (previous: {previous})" if previous else ""), version)


def _check_candidate(name: str, ref: tracking.VersionRef) -> None:
    if ref.tags.get("tunegate.gate") != "passed":
        raise PromotionError(f"version {ref.version} did not pass the gate")
    if ref.tags.get("tunegate.state") == "rejected":
        raise PromotionError(f"version {ref.version} was rejected")
    candidate = tracking.alias_version(name, tracking.CANDIDATE)
    if candidate is None or candidate.version != ref.version:
        now = f"version {candidate.version}" if candidate else "no version"
        raise PromotionError(f"version {ref.version} is not the current candidate ({now} is): superseded or already decided")
    if ref.run_id:
        status = tracking.get_run(ref.run_id).info.status
        if status != "FINISHED":
            # A run that failed after registering (say, the server went away) never half-promotes.
            raise PromotionError(f"version {ref.version}: its training run {ref.run_id} ended {status}, not FINISHED")


def reject(name: str, version: str, reviewer: str, reason: str) -> Outcome:
    if not reviewer.strip() or not reason.strip():
        raise PromotionError("a reviewer and a reason are required")
    with registry_lock():
        try:
            ref = tracking.get_version(name, version)
        except Exception:
            raise PromotionError(f"{name} has no version {version}") from None
        if ref.tags.get("tunegate.state") == "champion" or _champion_version(name) == version:
            raise PromotionError(f"version {version} is the champion; use rollback")
        tracking.set_version_tag(name, version, "tunegate.state", "rejected")
        tracking.set_version_tag(name, version, "tunegate.rejection", json.dumps({"reviewer": reviewer, "reason": reason}))
        tracking.remove_alias(name, tracking.CANDIDATE, only_from=version)
        record("rejected", {"model": name, "version": version, "reviewer": reviewer, "reason": reason, "env_user": environment_user()}, actor=reviewer, model_name=name)
        return Outcome("rejected", version, f"version {version} rejected; champion unchanged", _champion_version(name))


def rollback(name: str, reviewer: str, reason: str) -> Outcome:
    """Move ``champion`` back to ``previous``."""
    if not reviewer.strip() or not reason.strip():
        raise PromotionError("a reviewer and a reason are required")
    with registry_lock():
        previous = tracking.alias_version(name, PREVIOUS)
        current = _champion_version(name)
        if previous is None:
            raise PromotionError(f"{name} has no previous champion to roll back to")
        tracking.set_alias(name, tracking.CHAMPION, previous.version)
        tracking.client().delete_registered_model_alias(name, PREVIOUS)
        tracking.set_version_tag(name, previous.version, "tunegate.state", "champion")
        if current:
            tracking.set_version_tag(name, current, "tunegate.state", "rolled_back")
        record("rollback", {"model": name, "from": current, "to": previous.version, "reviewer": reviewer, "reason": reason, "env_user": environment_user()}, actor=reviewer, model_name=name)
        return Outcome("rolled_back", previous.version, f"champion -> version {previous.version} (was {current})", previous.version)


def verify(name: str | None) -> tuple[bool, str]:
    """The chain, and its length against the head the registry holds (so truncation shows)."""
    entries = audit.read_entries(audit_log())
    ok, message = audit.verify_chain(entries)
    if not ok or not name:
        return ok, message
    try:
        head = tracking.client().get_registered_model(name).tags.get("tunegate.audit_head")
    except Exception:
        head = None
    if head:
        seq, digest = head.split(":", 1)
        seq = int(seq)
        if seq >= len(entries):
            return False, f"entry {len(entries)}: missing — the registry's head is entry {seq}, the log ends at entry {len(entries) - 1} (truncated)"
        if entries[seq]["hash"] != digest:
            return False, f"entry {seq}: does not match the head hash recorded in the registry"
    return True, message + (f"; registry head at entry {head.split(':')[0]}" if head else "")
