"""Approvals against a real MLflow server with basic authentication (`tunegate server --auth`):
the reviewer is the authenticated user, who must hold the policy's permission on the model; every
refusal is audited; allow-list, roles and separation of duties apply to authenticated identities."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from auth_server import auth_mlflow_server
from tunegate.adapters import mlflow as tracking
from tunegate.governance import audit, lineage, promotion
from tunegate.params import ApprovalPolicy

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {name: f"{name}-password-12345" for name in ("ivan", "alice", "bob", "carol")}
ANYONE = ApprovalPolicy()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with auth_mlflow_server(tmp_path_factory.mktemp("auth")) as running:
        for name, password in PASSWORDS.items():
            running.add_user(name, password)
        yield running


@pytest.fixture()
def model(server, tmp_path, monkeypatch):
    """A fresh model whose candidate ivan's run produced; alice and carol hold MANAGE on it, bob only the default READ."""
    monkeypatch.setenv("TUNEGATE_AUDIT_DB", f"sqlite:///{tmp_path / 'audit.db'}")
    name = f"auth-{uuid.uuid4().hex[:8]}"
    with server.as_user("ivan", PASSWORDS["ivan"]):
        run_id = tracking.start_run("auth-tests", "r", {"tunegate.initiator": "ivan"})
        tracking.end_run(run_id, "FINISHED")
        client = tracking.client()
        client.create_registered_model(name)
        mv = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id, tags={
            "tunegate.gate": "passed", "tunegate.initiator": "ivan", "tunegate.baseline_version": "",
        })
        promotion.register_candidate(name, str(mv.version), run_id)
    for who in ("alice", "carol"):
        server.grant(who, name, "MANAGE")
    return name, str(mv.version)


def _as(server, who: str):
    return server.as_user(who, PASSWORDS[who])


def _last(name: str, event: str) -> dict:
    return [e for e in audit.store().entries(model=name) if e["event"] == event][-1]


def test_registration_is_recorded_for_the_authenticated_worker(server, model):
    name, version = model
    registered = _last(name, "registered")
    assert registered["actor"] == "ivan" and registered["authenticated"] is True
    assert registered["data"]["moves"] == [{"alias": "candidate", "from": None, "to": version}]


def test_approving_as_another_user_is_refused_and_audited(server, model):
    name, version = model
    with _as(server, "alice"):
        with pytest.raises(promotion.PromotionError, match="authenticated as 'alice': may not approve as 'carol'"):
            promotion.approve(name, version, "carol", "looks fine", ANYONE)
        assert tracking.alias_version(name, "champion") is None
        assert tracking.alias_version(name, "candidate").version == version
    refused = _last(name, "approval_refused")
    assert refused["actor"] == "alice" and refused["authenticated"] is True and refused["data"]["reviewer"] == "carol"


def test_a_user_without_the_required_permission_is_refused_and_audited(server, model):
    name, version = model
    with _as(server, "bob"), pytest.raises(promotion.PromotionError, match="'bob' holds READ on registered model .* requires MANAGE"):
        promotion.approve(name, version, None, "looks fine", ANYONE)
    refused = _last(name, "approval_refused")
    assert refused["actor"] == "bob" and refused["authenticated"] is True
    # Rollback and reject need the same permission.
    with _as(server, "bob"), pytest.raises(promotion.PromotionError, match="requires MANAGE"):
        promotion.reject(name, version, None, "no", ANYONE)
    assert _last(name, "reject_refused")["actor"] == "bob"
    with _as(server, "bob"):
        assert tracking.alias_version(name, "candidate").version == version
        assert tracking.alias_version(name, "champion") is None


def test_the_runs_initiator_may_not_approve_it_on_their_authenticated_identity(server, model):
    name, version = model  # ivan created the model, so he holds MANAGE on it
    with _as(server, "ivan"):
        with pytest.raises(promotion.PromotionError, match="separation of duties"):
            promotion.approve(name, version, None, "my own run", ANYONE)
        assert tracking.alias_version(name, "champion") is None
    refused = _last(name, "approval_refused")
    assert refused["actor"] == "ivan" and refused["authenticated"] is True


def test_the_allow_list_applies_on_top_of_the_permission(server, model):
    name, version = model
    policy = ApprovalPolicy(reviewers={"carol": ["ml"]}, required=[{"role": "ml", "count": 1}])
    with _as(server, "alice"), pytest.raises(promotion.PromotionError, match="allow-list"):
        promotion.approve(name, version, None, "looks fine", policy)
    with _as(server, "carol"):
        assert promotion.approve(name, version, None, "looks fine", policy).action == "promoted"


def test_an_allowed_user_promotes_and_the_record_says_authenticated(server, model):
    from tunegate.governance.lineage import history_lines

    name, version = model
    with _as(server, "alice"):
        outcome = promotion.approve(name, version, None, "reviewed the report", ANYONE)
        assert outcome.action == "promoted" and tracking.alias_version(name, "champion").version == version
        approval = _last(name, "approval")
        assert approval["actor"] == "alice" and approval["authenticated"] is True
        assert approval["data"]["identity_source"] == "mlflow-auth"
        [row] = lineage.alias_history(name, "champion")
        assert row["actor"] == "alice" and row["authenticated"] is True
        assert "by alice (authenticated)" in history_lines([row])[0]
        ok, message = promotion.verify(name)
        assert ok, message


def test_wrong_credentials_are_refused_before_anything_moves(server, model):
    name, version = model
    with server.as_user("alice", "not-her-password"), pytest.raises(promotion.PromotionError, match="refused the credentials as 'alice'"):
        promotion.approve(name, version, None, "looks fine", ANYONE)
    with _as(server, "alice"):
        assert tracking.alias_version(name, "champion") is None


def test_cli_reviewer_defaults_to_the_authenticated_user(server, model, tmp_path):
    name, version = model
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params" / "demo.yaml").read_text().replace("registered_name: tunegate-demo-assistant", f"registered_name: {name}"))
    base = {**os.environ, "TUNEGATE_HOME": str(tmp_path / "home")}

    def approve(who: str, *extra: str) -> subprocess.CompletedProcess:
        env = {**base, **server.env_for(who, PASSWORDS[who])}
        return subprocess.run([sys.executable, "-m", "tunegate.cli", "approve", version, "--reason", "via the CLI", "--params", str(params), *extra],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    impostor = approve("bob", "--reviewer", "alice")
    assert impostor.returncode == 1 and "authenticated as 'bob': may not approve as 'alice'" in impostor.stderr
    done = approve("carol")
    assert done.returncode == 0, done.stderr
    assert "champion -> version" in done.stdout
    assert _last(name, "approval")["data"]["reviewer"] == "carol"
    with _as(server, "carol"):
        assert tracking.alias_version(name, "champion").version == version
