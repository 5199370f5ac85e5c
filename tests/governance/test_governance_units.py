"""Units of governance: signing keys, the approval policy's and audit section's checks, where the audit
table lives, the acting identity without a server, and the preflight's audit check."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunegate.governance import audit, identity, signing
from tunegate.operations import preflight
from tunegate.params import ApprovalPolicy, AuditParams

REPO = Path(__file__).resolve().parents[2]


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    from tunegate.cli import app

    key = tmp_path / "keys" / "alice.pem"
    result = CliRunner().invoke(app, ["keygen", "--out", str(key), "--reviewer", "alice"])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("alice: ed25519:")
    public = line.split(": ", 1)[1]
    assert signing.public_key_of(signing.load_private(key)) == public
    again = CliRunner().invoke(app, ["keygen", "--out", str(key)])
    assert again.exit_code == 1 and "refusing to overwrite" in again.output


def test_a_signature_covers_the_whole_content(tmp_path):
    public = signing.generate(tmp_path / "k.pem")
    key = signing.load_private(tmp_path / "k.pem")
    data = {"model": "m", "version": "3", "reviewer": "alice", "reason": "ok", "roles": ["ml"]}
    data["signature"] = signing.sign(key, data)
    assert signing.check(data, public) is None
    for field, value in (("version", "4"), ("reviewer", "bob"), ("reason", "forged"), ("roles", ["policy"])):
        assert signing.check({**data, field: value}, public) == "the signature does not verify"
    other = signing.generate(tmp_path / "other.pem")
    assert "not the reviewer's listed public key" in signing.check(data, other)
    assert signing.check({k: v for k, v in data.items() if k != "signature"}, public) == "no signature"


def test_policy_checks_keys_and_signature_requirements(tmp_path):
    public = signing.generate(tmp_path / "k.pem")
    assert ApprovalPolicy(require_signatures=True, public_keys={"alice": public}).require_signatures
    with pytest.raises(ValueError, match="needs public_keys"):
        ApprovalPolicy(require_signatures=True)
    with pytest.raises(ValueError, match="public_keys.alice"):
        ApprovalPolicy(public_keys={"alice": "rsa:AAAA"})
    with pytest.raises(ValueError, match="reviewers without a public key: bob"):
        ApprovalPolicy(require_signatures=True, public_keys={"alice": public}, reviewers={"alice": ["ml"], "bob": ["policy"]})
    with pytest.raises(ValueError):
        ApprovalPolicy(required_permission="OWNER")


def test_audit_url_in_params_carries_no_password():
    assert AuditParams(database_url="postgresql://tunegate@db:5432/mlflow").database_url
    with pytest.raises(ValueError, match="password"):
        AuditParams(database_url="postgresql://tunegate:s3cret@db:5432/mlflow")


def test_where_the_audit_table_lives(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path))
    monkeypatch.delenv("TUNEGATE_AUDIT_DB", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    audit.set_params_url(None)
    assert audit.resolve_url() == f"sqlite:///{tmp_path.resolve() / 'mlflow' / 'mlflow.db'}"  # the embedded MLflow store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow@db:5432/mlflow")
    assert audit.resolve_url() == "postgresql://mlflow@db:5432/mlflow"  # a SQL tracking store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    with pytest.raises(audit.AuditError, match="TUNEGATE_AUDIT_DB"):
        audit.resolve_url()  # a server: which database every host shares must be said
    (tmp_path / "server.json").write_text(json.dumps({"mlflow_url": "http://127.0.0.1:5999", "audit_db": "sqlite:////srv/mlflow.db"}))
    assert audit.resolve_url() == "sqlite:////srv/mlflow.db"  # ... or announced by `tunegate server` in this home
    try:
        audit.set_params_url("postgresql://a@db/x")
        assert audit.resolve_url() == "postgresql://a@db/x"
        monkeypatch.setenv("TUNEGATE_AUDIT_DB", "postgresql://b@db/y")
        assert audit.resolve_url() == "postgresql://b@db/y"  # the environment wins over the params
    finally:
        audit.set_params_url(None)


def test_without_a_server_the_identity_is_the_environments_and_not_authenticated(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TUNEGATE_ACTOR", "dana")
    who = identity.current_identity()
    assert who == identity.Identity("dana", False, "environment")
    assert identity.holds("MANAGE", "EDIT") and not identity.holds("READ", "EDIT") and not identity.holds("NO_PERMISSIONS", "READ")


def test_preflight_stops_a_run_against_a_server_with_no_audit_database(tmp_path, monkeypatch):
    from tunegate.params import load_params

    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path))
    monkeypatch.delenv("TUNEGATE_AUDIT_DB", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: the audit check comes first
    problems = preflight.audit_problems(load_params(REPO / "params" / "demo.yaml"))
    assert len(problems) == 1 and problems[0].startswith("audit:") and "TUNEGATE_AUDIT_DB" in problems[0]


def test_preflight_names_an_unreachable_audit_database(tmp_path, monkeypatch):
    from tunegate.params import load_params

    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEGATE_AUDIT_DB", f"sqlite:///{tmp_path / 'no-such-dir-file' / 'x'}/deeper/audit.db")
    os.makedirs(tmp_path / "no-such-dir-file")
    (tmp_path / "no-such-dir-file" / "x").write_text("a file where a directory should be")
    problems = preflight.audit_problems(load_params(REPO / "params" / "demo.yaml"))
    assert problems and problems[0].startswith("audit:"), problems


def test_preflight_creates_no_database_and_checks_an_earlier_trail_waiting_for_import(tmp_path, monkeypatch):
    from tunegate.params import load_params

    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path))
    monkeypatch.delenv("TUNEGATE_AUDIT_DB", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = load_params(REPO / "params" / "demo.yaml")
    assert preflight.audit_problems(params) == []
    assert list(tmp_path.rglob("*.db")) == []  # the check created nothing
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "events.jsonl").write_text(json.dumps({"seq": 0, "prev": "x", "hash": "y"}) + "\n")
    problems = preflight.audit_problems(params)
    assert len(problems) == 1 and "events.jsonl" in problems[0] and "broken (entry 0:" in problems[0]
