"""Promotion on MLflow registry aliases: approve, reject, rollback — with authenticated reviewers,
separation of duties, role-based approvals, optional signatures, compare-and-set against the champion
a candidate was evaluated against, and an audit entry for every step.

States of a version: registered with alias ``candidate`` (gate passed) -> approvals recorded
as version tags -> when the policy's roles are covered, ``champion`` moves to it and the old
champion keeps ``previous``. A rejected or superseded candidate never becomes champion.
Every alias move (register, promote, reject, rollback) happens under the database-held promotion
lock (:meth:`tunegate.governance.audit.AuditStore.promotion_lock`), so racing approvals on any number of hosts
leave one champion, and is recorded with the moves it made (``tunegate history`` reads them).

Who acts: with an MLflow server that authenticates users, the authenticated user (any other
``reviewer`` is refused) holding ``policy.required_permission`` on the model; otherwise the name
given, recorded as ``authenticated: false``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate import tags
from tunegate.adapters import mlflow as tracking
from tunegate.governance import audit, signing
from tunegate.governance.trail import record
from tunegate.governance.identity import Identity, IdentityError, current_identity, environment_user, holds, model_permission
from tunegate.governance.lineage import AliasDrift, alias_drift
from tunegate.params import ApprovalPolicy
from tunegate.paths import redact


class PromotionError(RuntimeError):
    """A promotion step the policy or the registry's state does not allow; nothing was changed."""


@dataclass(frozen=True)
class Outcome:
    action: str  # "promoted" | "approval_recorded" | "rejected" | "rolled_back"
    version: str
    message: str
    champion: str | None


@contextlib.contextmanager
def registry_lock(name: str):
    """The promotion lock for ``name``, held by the audit database (all hosts)."""
    with audit.store().promotion_lock(name):
        yield


def _moves(before: dict[str, str], after: dict[str, str]) -> list[dict[str, str | None]]:
    return [
        {"alias": alias, "from": before.get(alias), "to": after.get(alias)}
        for alias in sorted(set(before) | set(after))
        if before.get(alias) != after.get(alias)
    ]


def _acting(name: str, reviewer: str | None, policy: ApprovalPolicy | None, action: str, version: str | None = None) -> tuple[Identity, str]:
    """The identity that acts and the reviewer name it acts as; PromotionError (audited) when not allowed."""
    try:
        who = current_identity()
    except IdentityError as error:
        raise PromotionError(str(error)) from None
    given = (reviewer or "").strip()
    if who.authenticated:
        name_used = given or who.name
        if name_used != who.name:
            _refused(name, action, who, name_used, f"authenticated as {who.name!r}: may not {action} as {name_used!r}", version)
        if policy is not None and policy.required_permission:
            try:
                permission = model_permission(name, who)
            except IdentityError as error:
                raise PromotionError(str(error)) from None
            if not holds(permission, policy.required_permission):
                _refused(name, action, who, name_used,
                         f"{who.name!r} holds {permission} on registered model {name}; to {action} the policy requires {policy.required_permission}", version)
        return who, name_used
    if policy is not None and policy.require_authentication:
        _refused(name, action, who, given or who.name,
                 f"the policy requires an authenticated reviewer and {redact(tracking.tracking_uri())} does not authenticate users (see docs/deploy.md)", version)
    if not given:
        raise PromotionError("a reviewer is required (--reviewer): the tracking store does not authenticate users")
    return who, given


def _refused(name: str, action: str, who: Identity, reviewer: str, why: str, version: str | None = None) -> None:
    record(f"{action}_refused" if action != "approve" else "approval_refused",
           {"model": name, "version": version, "reviewer": reviewer, "why": why, "identity_source": who.source},
           actor=who.name if who.authenticated else reviewer, model_name=name, authenticated=who.authenticated)
    raise PromotionError(why)


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
        key.removeprefix(tags.APPROVAL_PREFIX): json.loads(value)["roles"]
        for key, value in ref.tags.items()
        if key.startswith(tags.APPROVAL_PREFIX)
    }


def _champion_version(name: str) -> str | None:
    ref = tracking.alias_version(name, tracking.CHAMPION)
    return ref.version if ref else None


def approve(name: str, version: str, reviewer: str | None, reason: str, policy: ApprovalPolicy, signing_key: Path | None = None) -> Outcome:
    """Record an approval; promote when the policy's roles are covered. Raises PromotionError, changing nothing."""
    if not reason.strip():
        raise PromotionError("a reason is required")
    who, reviewer = _acting(name, reviewer, policy, "approve", version)
    key = None
    if signing_key is not None or policy.require_signatures:
        if signing_key is None:
            _refused(name, "approve", who, reviewer, "the policy requires signed approvals: give your key with --key (or TUNEGATE_SIGNING_KEY)", version)
        try:
            key = signing.load_private(signing_key)
        except signing.SigningError as error:
            raise PromotionError(str(error)) from None
        listed = policy.public_keys.get(reviewer)
        if listed is None and policy.require_signatures:
            _refused(name, "approve", who, reviewer, f"{reviewer!r} has no public key in gate.approvals.public_keys", version)
        if listed is not None and signing.public_key_of(key) != listed:
            _refused(name, "approve", who, reviewer, f"the key {signing_key} is not {reviewer!r}'s listed public key", version)
    with registry_lock(name):
        try:
            ref = tracking.get_version(name, version)
        except Exception:
            raise PromotionError(f"{name} has no version {version}") from None
        try:
            _check_candidate(name, ref)
            roles = reviewer_roles(policy, reviewer)
            initiator = ref.tags.get(tags.INITIATOR, "")
            if reviewer == initiator and not policy.allow_self_approval:
                raise PromotionError(f"{reviewer!r} started the run that produced version {version} and may not approve it (separation of duties)")
            expected = ref.tags.get(tags.BASELINE_VERSION, "")
            current = _champion_version(name) or ""
            if expected != current:
                raise PromotionError(
                    f"version {version} was evaluated against champion {expected or 'none (base model)'}, but the champion is now "
                    f"{current or 'none'}: re-evaluate it with a new run"
                )
        except PromotionError as error:
            record("approval_refused", {"model": name, "version": version, "reviewer": reviewer, "env_user": environment_user(), "reason": reason, "why": str(error)},
                   actor=reviewer, model_name=name, authenticated=who.authenticated)
            raise
        approval = {"roles": roles, "reason": reason, "env_user": environment_user(), "authenticated": who.authenticated,
                    "identity_source": who.source}
        data = {"model": name, "version": version, "reviewer": reviewer, **approval}
        if key is not None:
            data["signature"] = signing.sign(key, data)
            approval["signed"] = True
        tracking.set_version_tag(name, version, tags.APPROVAL_PREFIX + reviewer, json.dumps(approval))
        approvals = approvals_of(tracking.get_version(name, version))
        record("approval", data, actor=reviewer, model_name=name, authenticated=who.authenticated)
        missing = missing_roles(policy, approvals)
        if missing:
            return Outcome("approval_recorded", version, f"approval by {reviewer} recorded; still needed: {', '.join(missing)}", current or None)
        before = tracking.aliases(name)
        previous = current or None
        tracking.set_alias(name, tracking.CHAMPION, version)
        if previous:
            tracking.set_alias(name, tracking.PREVIOUS, previous)
        tracking.remove_alias(name, tracking.CANDIDATE)
        tracking.set_version_tag(name, version, tags.STATE, "champion")
        if previous:
            tracking.set_version_tag(name, previous, tags.STATE, "previous")
        entry = record("alias_moved", {"model": name, "version": version, "champion": version, "previous": previous,
                                       "approvers": sorted(approvals), "reason": reason, "moves": _moves(before, tracking.aliases(name))},
                       actor=reviewer, model_name=name, authenticated=who.authenticated)
        tracking.set_version_tag(name, version, tags.AUDIT_HEAD, f"{entry['seq']}:{entry['hash']}")
        from tunegate.governance.lineage import publish_model_card

        with contextlib.suppress(Exception):  # the card is a view; the promotion itself is done
            publish_model_card(name, version)
        return Outcome("promoted", version, f"champion -> version {version}" + (f" (previous: {previous})" if previous else ""), version)


def _republish_cards(name: str, versions: list[str | None]) -> None:
    from tunegate.governance.lineage import publish_model_card

    for version in versions:
        if version:
            with contextlib.suppress(Exception):  # the card is a view; the move itself is done
                publish_model_card(name, version)


def register_candidate(name: str, version: str, run_id: str, commit: str | None = None,
                       replaced: dict[str, Any] | None = None) -> dict[str, Any]:
    """Point alias ``candidate`` at a version that passed the gate, under the promotion lock, and record the move
    (``replaced``: the waiting version it takes the alias from, and the comparison that allowed it)."""
    with registry_lock(name):
        ref = tracking.get_version(name, version)
        if ref.tags.get(tags.GATE) != "passed":
            raise PromotionError(f"version {version} did not pass the gate: not made a candidate")
        before = tracking.aliases(name)
        tracking.set_alias(name, tracking.CANDIDATE, version)
        data = {"run_id": run_id, "model": name, "version": version, "alias": tracking.CANDIDATE,
                "reason": "passed the gate", "moves": _moves(before, tracking.aliases(name))}
        if replaced:
            data["replaced_waiting"] = replaced
        return record("registered", data, model_name=name, commit=commit)


def detach_candidate(name: str, version: str, reason: str) -> None:
    """Take alias ``candidate`` off ``version`` (a run that failed after registering), under the lock, recorded."""
    with registry_lock(name):
        before = tracking.aliases(name)
        tracking.remove_alias(name, tracking.CANDIDATE, only_from=version)
        tracking.set_version_tag(name, version, tags.STATE, "failed_run")
        moves = _moves(before, tracking.aliases(name))
        if moves:
            record("candidate_detached", {"model": name, "version": version, "reason": reason, "moves": moves}, model_name=name)


def _check_candidate(name: str, ref: tracking.VersionRef) -> None:
    if ref.tags.get(tags.GATE) != "passed":
        raise PromotionError(f"version {ref.version} did not pass the gate")
    if ref.tags.get(tags.STATE) == "rejected":
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


def reject(name: str, version: str, reviewer: str | None, reason: str, policy: ApprovalPolicy | None = None) -> Outcome:
    if not reason.strip():
        raise PromotionError("a reason is required")
    who, reviewer = _acting(name, reviewer, policy, "reject", version)
    with registry_lock(name):
        try:
            ref = tracking.get_version(name, version)
        except Exception:
            raise PromotionError(f"{name} has no version {version}") from None
        if ref.tags.get(tags.STATE) == "champion" or _champion_version(name) == version:
            raise PromotionError(f"version {version} is the champion; use rollback")
        before = tracking.aliases(name)
        tracking.set_version_tag(name, version, tags.STATE, "rejected")
        tracking.set_version_tag(name, version, tags.REJECTION, json.dumps({"reviewer": reviewer, "reason": reason, "authenticated": who.authenticated}))
        tracking.remove_alias(name, tracking.CANDIDATE, only_from=version)
        record("rejected", {"model": name, "version": version, "reviewer": reviewer, "reason": reason, "env_user": environment_user(),
                            "moves": _moves(before, tracking.aliases(name))},
               actor=reviewer, model_name=name, authenticated=who.authenticated)
        return Outcome("rejected", version, f"version {version} rejected; champion unchanged", _champion_version(name))


def rollback(name: str, reviewer: str | None, reason: str, policy: ApprovalPolicy | None = None) -> Outcome:
    """Move ``champion`` back to ``previous``."""
    if not reason.strip():
        raise PromotionError("a reason is required")
    who, reviewer = _acting(name, reviewer, policy, "rollback")
    with registry_lock(name):
        previous = tracking.alias_version(name, tracking.PREVIOUS)
        current = _champion_version(name)
        if previous is None:
            raise PromotionError(f"{name} has no previous champion to roll back to")
        before = tracking.aliases(name)
        tracking.set_alias(name, tracking.CHAMPION, previous.version)
        tracking.client().delete_registered_model_alias(name, tracking.PREVIOUS)
        tracking.set_version_tag(name, previous.version, tags.STATE, "champion")
        if current:
            tracking.set_version_tag(name, current, tags.STATE, "rolled_back")
        record("rollback", {"model": name, "version": previous.version, "from": current, "to": previous.version, "reviewer": reviewer,
                            "reason": reason, "env_user": environment_user(), "moves": _moves(before, tracking.aliases(name))},
               actor=reviewer, model_name=name, authenticated=who.authenticated)
        _republish_cards(name, [previous.version, current])
        return Outcome("rolled_back", previous.version, f"champion -> version {previous.version} (was {current})", previous.version)


# --- aliases moved outside tunegate ----------------------------------------------------------------


class UnauditedChampion(PromotionError):
    """The registry's champion is not where tunegate's audited moves put it."""


def check_champion_audited(name: str, run_id: str, accept: bool = False, commit: str | None = None) -> AliasDrift | None:
    """At the start of a run: the registry's ``champion`` must be where the audit trail's last move put it,
    or it is no baseline (UnauditedChampion, before anything is trained). ``accept``
    (``--accept-unaudited-champion``): the run uses it anyway and the trail records who accepted it."""
    drift = next((d for d in alias_drift(name) if d.alias == tracking.CHAMPION), None)
    if drift is None:
        return None
    if not accept:
        back = f"set it back to version {drift.audited}" if drift.audited else "remove it"
        raise UnauditedChampion(
            f"{drift.message()}: not used as the baseline; nothing was trained. {back[0].upper() + back[1:]} (what the "
            "trail records) and promote with tunegate approve, or pass --accept-unaudited-champion to evaluate against it "
            "anyway (audited)")
    record("unaudited_champion_accepted", {"run_id": run_id, "model": name, **drift.to_dict()}, model_name=name, commit=commit)
    return drift


def _heads(entries: list[dict[str, Any]], name: str | None) -> list[tuple[str, str]]:
    """(model, head) for ``name`` and every model the chain names that carries a head tag."""
    names = {e["data"].get("model") for e in entries if isinstance(e.get("data"), dict) and e["data"].get("model")}
    if name:
        names.add(name)
    heads = []
    for model in sorted(names):
        try:
            head = tracking.client().get_registered_model(model).tags.get(tags.AUDIT_HEAD)
        except Exception:
            head = None
        if head:
            heads.append((model, head))
    return heads


def signature_problems(entries: list[dict[str, Any]], policy: ApprovalPolicy | None) -> list[str]:
    """Approvals whose signature is missing or invalid, and promotions not backed by valid approvals."""
    if policy is None or not (policy.require_signatures or policy.public_keys):
        return []
    problems = []
    valid: dict[tuple[str, str], set[str]] = {}
    for entry in entries:
        data = entry.get("data") or {}
        if entry["event"] == "approval":
            reviewer = data.get("reviewer")
            key = policy.public_keys.get(reviewer)
            if key is None:
                if policy.require_signatures:
                    problems.append(f"entry {entry['seq']}: approval by {reviewer!r}, who has no public key in the policy")
                continue
            why = signing.check(data, key)
            if why is None:
                valid.setdefault((data.get("model"), str(data.get("version"))), set()).add(reviewer)
            elif policy.require_signatures or data.get("signature"):
                problems.append(f"entry {entry['seq']}: approval of {data.get('model')} version {data.get('version')} by {reviewer!r}: {why}")
        elif entry["event"] == "alias_moved" and policy.require_signatures:
            signed = valid.get((data.get("model"), str(data.get("version"))), set())
            unsigned = sorted(set(data.get("approvers") or []) - signed)
            if unsigned:
                problems.append(f"entry {entry['seq']}: promotion of {data.get('model')} version {data.get('version')} rests on approvals without a valid signature ({', '.join(unsigned)})")
    return problems


def verify(name: str | None, policy: ApprovalPolicy | None = None) -> tuple[bool, str]:
    """The chain as stored, its length against the heads the registry holds (so truncation shows), and signatures."""
    store = audit.store()
    ok, message, entries = store.verify()
    if not ok:
        return ok, message
    checked = []
    for model, head in _heads(entries, name):
        seq_text, digest = head.split(":", 1)
        seq = int(seq_text)
        if seq >= len(entries):
            return False, f"entry {len(entries)}: missing — the registry's head for {model} is entry {seq}, the trail ends at entry {len(entries) - 1} (truncated)"
        if entries[seq]["hash"] != digest:
            return False, f"entry {seq}: does not match the head hash recorded on {model} in the registry"
        checked.append(f"{model} at entry {seq}")
    problems = signature_problems(entries, policy)
    if name:  # the registry's aliases against the trail's last move of each (moved outside tunegate?)
        problems += [d.message() + f" on {name}" for d in alias_drift(name, [e for e in entries if audit.model_of(e) == name])]
    if problems:
        return False, "; ".join(problems)
    signed = sum(1 for e in entries if e["event"] == "approval" and (e.get("data") or {}).get("signature"))
    return True, message + (f"; registry heads: {', '.join(checked)}" if checked else "") + (f"; {signed} signed approval(s) verified" if signed and policy and policy.public_keys else "")
