"""The append-only, hash-chained audit trail, kept in a SQL database (SQLAlchemy).

Each entry carries the previous entry's hash, so editing, deleting or reordering rows breaks the
chain at a point ``verify_chain`` names; the head (``seq:hash``) is anchored outside the table, on
the registered model in MLflow, so deleting the last rows shows too.

Where the table lives (``resolve_url``): ``$TUNEGATE_AUDIT_DB``, else the params' ``audit.database_url``,
else the MLflow backend store when it is a SQL database (the embedded SQLite by default, PostgreSQL
for a team), else — for a tracking *server* — the database the ``tunegate server`` of this
``$TUNEGATE_HOME`` announced in ``server.json``. Writers on any number of machines extend one chain:
appends are serialised by the database (a PostgreSQL advisory transaction lock, SQLite
``BEGIN IMMEDIATE``), and ``seq`` and ``prev`` are unique, so the chain cannot fork even then.

Alias moves take the *promotion lock* (``AuditStore.promotion_lock``) around read-check-move: a
PostgreSQL advisory lock held in its own transaction, or on SQLite ``BEGIN IMMEDIATE`` on a companion
database ``<db>.locks`` (SQLite has one writer per file, and MLflow and the audit append write to the
main file while the lock is held).

A JSONL trail from before (``$TUNEGATE_AUDIT_DIR`` or ``$TUNEGATE_HOME/audit/events.jsonl``) is
imported once, on first use, into an empty table with its hashes as they were; when the table
already holds a chain, ``tunegate audit import FILE`` attaches it by one entry naming the file's head
and digest. Either way the file is then renamed ``events.jsonl.imported``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any, Iterator

from tunegate.governance.identity import environment_user
from tunegate.paths import redact

GENESIS = "0" * 64
TABLE = "tunegate_audit_events"
# PostgreSQL advisory lock keys: appends, and the promotion lock (per model name).
APPEND_LOCK_KEY = 0x7475_6E65_6761_7465 & 0x7FFF_FFFF_FFFF_FFFF
LOCK_CLASSES = {"promotion": 0x7475_6E65, "head": 0x7475_6E66}


class AuditError(RuntimeError):
    """The audit store cannot be found, reached or written; nothing was recorded."""


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_jsonl(log: Path) -> list[dict[str, Any]]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def verify_chain(entries: list[dict[str, Any]]) -> tuple[bool, str]:
    """Return (ok, message); the message names the first bad entry."""
    prev = GENESIS
    for position, entry in enumerate(entries):
        if entry.get("seq") != position:
            return False, f"entry {position}: sequence number {entry.get('seq')} out of place"
        if entry.get("prev") != prev:
            return False, f"entry {position}: does not follow the previous entry's hash"
        if entry_hash(entry) != entry.get("hash"):
            return False, f"entry {position}: content does not match its hash"
        prev = entry["hash"]
    return True, f"{len(entries)} entries, chain intact"


# --- where the table lives ---------------------------------------------------------------------

_params_url: str | None = None


def set_params_url(url: str | None) -> None:
    """The params' ``audit.database_url`` (``$TUNEGATE_AUDIT_DB`` still wins)."""
    global _params_url
    _params_url = url or None


def _server_state_url() -> str | None:
    from tunegate.paths import tunegate_home, tracking_uri

    path = tunegate_home() / "server.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if state.get("mlflow_url", "").rstrip("/") == tracking_uri().rstrip("/"):
        return state.get("audit_db") or None
    return None


def resolve_url() -> str:
    """The audit database URL; raises AuditError (saying what to set) when there is none."""
    from tunegate.paths import tracking_uri

    explicit = os.environ.get("TUNEGATE_AUDIT_DB") or _params_url
    if explicit:
        return explicit
    uri = tracking_uri()
    if uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "postgres", "mysql", "mssql"):
        return uri
    announced = _server_state_url()
    if announced:
        return announced
    raise AuditError(
        f"MLFLOW_TRACKING_URI is a tracking server ({uri}) and no audit database is set: set TUNEGATE_AUDIT_DB "
        "to the SQL database every host shares (e.g. the MLflow server's PostgreSQL, "
        "postgresql://tunegate@db.internal:5432/mlflow) or `audit.database_url` in the params; see docs/deploy.md"
    )


def legacy_log() -> Path:
    from tunegate.paths import tunegate_home

    shared = os.environ.get("TUNEGATE_AUDIT_DIR")
    return (Path(shared) if shared else tunegate_home() / "audit") / "events.jsonl"


# --- the store -----------------------------------------------------------------------------------


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _engine(url: str):
    """One engine per URL; SQLite connections begin write transactions with BEGIN IMMEDIATE."""
    from sqlalchemy import create_engine, event

    url = url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 120}, poolclass=_null_pool())

        @event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_connection, record):  # noqa: ARG001
            dbapi_connection.isolation_level = None  # SQLAlchemy's documented pysqlite recipe

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, poolclass=_null_pool())


def _null_pool():
    from sqlalchemy.pool import NullPool

    return NullPool  # short-lived CLI processes and Prefect threads: no connections left open


def _table(metadata):
    from sqlalchemy import Column, Integer, String, Table, Text

    return Table(
        TABLE, metadata,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("hash", String(64), nullable=False, unique=True),
        Column("prev", String(64), nullable=False, unique=True),  # one successor per entry: no fork
        Column("time", String(40), nullable=False),
        Column("event", String(64), nullable=False, index=True),
        Column("model", String(256), nullable=True, index=True),
        Column("body", Text, nullable=False),  # the entry as hashed (canonical JSON)
    )


def model_of(entry: dict[str, Any]) -> str | None:
    """The registered model an entry belongs to (entries of an earlier version name it only in their data)."""
    return entry["model"] if "model" in entry else (entry.get("data") or {}).get("model")


class AuditStore:
    """The audit table in one database."""

    def __init__(self, url: str):
        from sqlalchemy import MetaData

        self.url = url
        self.engine = _engine(url)
        self.dialect = self.engine.dialect.name
        self.metadata = MetaData()
        self.table = _table(self.metadata)
        self._ensure_table()

    def __repr__(self) -> str:
        return f"AuditStore({redact(self.url)})"

    def _ensure_table(self) -> None:
        from sqlalchemy import inspect
        from sqlalchemy.exc import SQLAlchemyError

        for attempt in range(3):
            try:
                if inspect(self.engine).has_table(TABLE):
                    return
                with self.engine.begin() as conn:
                    if self.dialect == "postgresql":
                        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})")
                    self.metadata.create_all(conn, checkfirst=True)
                return
            except SQLAlchemyError as error:  # two hosts creating it at once: the loser sees it next time
                if attempt == 2:
                    raise AuditError(f"cannot create the audit table in {redact(self.url)}: {error}") from error
                time.sleep(0.5)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction that holds the append lock until commit."""
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})")
            # SQLite: the transaction began with BEGIN IMMEDIATE (the one writer of the file).
            yield conn

    def _last(self, conn) -> tuple[int, str]:
        from sqlalchemy import select

        t = self.table
        row = conn.execute(select(t.c.seq, t.c.hash).order_by(t.c.seq.desc()).limit(1)).first()
        return (row.seq, row.hash) if row else (-1, GENESIS)

    def _insert(self, conn, entry: dict[str, Any]) -> None:
        conn.execute(self.table.insert().values(
            seq=entry["seq"], hash=entry["hash"], prev=entry["prev"], time=entry["time"], event=entry["event"],
            model=model_of(entry), body=canonical(entry),
        ))

    def append(self, event: str, data: dict[str, Any], actor: str, authenticated: bool = False, commit: str | None = None,
               model: str | None = None) -> dict[str, Any]:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self._write() as conn:
                return self._append_in(conn, event, data, actor, authenticated, commit, model)
        except SQLAlchemyError as error:
            raise AuditError(f"cannot append to the audit trail in {redact(self.url)}: {type(error).__name__}: {error}") from error

    def _append_in(self, conn, event: str, data: dict[str, Any], actor: str, authenticated: bool = False,
                   commit: str | None = None, model: str | None = None) -> dict[str, Any]:
        """Chain and insert one entry inside a write transaction that holds the append lock."""
        seq, prev = self._last(conn)
        entry = {
            "seq": seq + 1,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(),
            "event": event,
            "actor": actor,
            "authenticated": authenticated,
            "host": socket.gethostname(),
            "model": model or data.get("model"),
            "commit": commit,
            "data": data,
            "prev": prev,
        }
        entry["hash"] = entry_hash(entry)
        self._insert(conn, entry)
        return entry

    def entries(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every entry as it was hashed, in ``seq`` order (or only those naming ``model``)."""
        from sqlalchemy import select

        t = self.table
        query = select(t.c.body).order_by(t.c.seq)
        if model is not None:
            query = query.where(t.c.model == model)
        with self.engine.connect() as conn:
            return [json.loads(row.body) for row in conn.execute(query)]

    def rows(self) -> list[dict[str, Any]]:
        """The raw rows (indexed columns and body) for verification."""
        from sqlalchemy import select

        t = self.table
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(select(t).order_by(t.c.seq))]

    def verify(self) -> tuple[bool, str, list[dict[str, Any]]]:
        """The chain as stored: each row's body against its hash, link and position, and its columns against its body."""
        rows = self.rows()
        entries = []
        for position, row in enumerate(rows):
            try:
                entry = json.loads(row["body"])
            except ValueError:
                return False, f"entry {position}: its body is not JSON", entries
            for column in ("seq", "hash", "prev", "event", "model"):
                value = model_of(entry) if column == "model" else entry.get(column)
                if value != row[column]:
                    return False, f"entry {position}: column {column} ({row[column]}) does not match the entry ({value})", entries
            entries.append(entry)
        ok, message = verify_chain(entries)
        return ok, message, entries

    def import_jsonl(self, log: Path, attach: bool = True) -> dict[str, Any] | None:
        """Import a JSONL trail once (see the module docstring); returns what was done, None if nothing.

        Into an empty table the entries go as they are. When the table already holds a chain, the file
        is attached by one entry (its head and digest) only with ``attach`` — an explicit
        ``tunegate audit import`` —, never on its own: a stray local trail must not join a team's.
        """
        entries = read_jsonl(log)
        if not entries:
            return None
        ok, message = verify_chain(entries)
        if not ok:
            raise AuditError(f"the audit trail {log} to import is broken ({message}); fix or move it, then retry")
        digest = hashlib.sha256(log.read_bytes()).hexdigest()
        with self._write() as conn:  # the entries and the entry that records their coming, in one transaction
            seq, _ = self._last(conn)
            if seq < 0:
                for entry in entries:
                    self._insert(conn, entry)
                outcome = {"imported": len(entries), "source": str(log)}
                self._append_in(conn, "audit_trail_imported", {"source": str(log), "entries": len(entries), "sha256": digest},
                                actor=environment_user())
            elif attach:
                outcome = {"attached": len(entries), "source": str(log)}
                self._append_in(conn, "audit_trail_attached", {"source": str(log), "entries": len(entries),
                                                               "head": f"{entries[-1]['seq']}:{entries[-1]['hash']}", "sha256": digest},
                                actor=environment_user())
            else:
                return {"skipped": len(entries), "source": str(log)}
        with contextlib.suppress(FileNotFoundError):
            log.rename(log.with_name(log.name + ".imported"))
        return outcome

    @contextlib.contextmanager
    def promotion_lock(self, name: str, timeout: float = 300.0) -> Iterator[None]:
        """Exclusive, database-held lock around read-check-move of ``name``'s aliases, across hosts."""
        with self._named_lock("promotion", name, timeout):
            yield

    @contextlib.contextmanager
    def head_lock(self, name: str, timeout: float = 300.0) -> Iterator[None]:
        """Held from an append for model ``name`` until its registry head is written, so heads move in seq order.
        Always taken inside the promotion lock, never around it (no lock-order cycle)."""
        with self._named_lock("head", name, timeout):
            yield

    @contextlib.contextmanager
    def _named_lock(self, kind: str, name: str, timeout: float) -> Iterator[None]:
        if self.dialect == "postgresql":
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)
            with self.engine.connect() as conn:
                with conn.begin():
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(timeout * 1000)}ms'")
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_CLASSES[kind]}, {key})")
                    yield
            return
        path = _sqlite_path(self.url)
        if path is None:
            raise AuditError(f"no {kind} lock for {redact(self.url)} ({self.dialect}): use PostgreSQL or SQLite")
        import sqlite3

        # One writer per SQLite file, and MLflow and the audit append write the main file while the lock
        # is held: the lock is a write transaction on a companion file.
        lock_db = path.with_name(path.name + (".locks" if kind == "promotion" else f".{kind}-lock"))
        conn = sqlite3.connect(lock_db, timeout=timeout, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                conn.execute("ROLLBACK")
        finally:
            conn.close()


def check_reachable() -> str:
    """What the preflight asks, without creating or writing anything: the audit database resolves and
    answers (SQLite: its directory can hold it), and an earlier JSONL trail waiting for import is intact.
    Returns the URL; raises AuditError naming the problem."""
    import sqlite3

    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    url = resolve_url()
    path = _sqlite_path(url)
    if path is not None:
        folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
        if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK):
            raise AuditError(f"the audit database {path} cannot be created: {folder} is not a writable directory")
        if path.exists():
            try:
                sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30).execute("SELECT 1").fetchone()
            except sqlite3.Error as error:
                raise AuditError(f"the audit database {path} cannot be read: {error}") from error
    else:
        try:
            with _engine(url).connect() as conn:
                conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, ImportError) as error:
            raise AuditError(f"cannot reach the audit database {redact(url)}: {type(error).__name__}: {str(error).splitlines()[0]}") from error
    log = legacy_log()
    if log.is_file():
        try:
            ok, message = verify_chain(read_jsonl(log))
        except ValueError as error:
            ok, message = False, f"not JSONL: {error}"
        if not ok:
            raise AuditError(f"the earlier audit trail {log}, to be imported on first use, is broken ({message}); fix or move it")
    return url


@functools.lru_cache(maxsize=8)
def _store_for(url: str) -> AuditStore:
    store = AuditStore(url)
    log = legacy_log()
    if log.is_file():
        outcome = store.import_jsonl(log, attach=False)
        if outcome and "skipped" in outcome:
            import sys

            print(f"warning: {log} holds {outcome['skipped']} entries of an earlier JSONL audit trail, and the audit table "
                  f"in {redact(url)} already holds a chain, so it was not imported: attach it with `tunegate audit import {log}` "
                  "or move it away", file=sys.stderr)
    return store


def store() -> AuditStore:
    """The audit store for this process's settings (one per URL; a JSONL trail is imported on first use)."""
    from sqlalchemy.exc import SQLAlchemyError

    url = resolve_url()
    try:
        return _store_for(url)
    except (SQLAlchemyError, OSError) as error:
        raise AuditError(f"cannot reach the audit database {redact(url)}: {type(error).__name__}: {error}") from error


# --- the audit writer --------------------------------------------------------------------------------

# Publishes a model's newest head besides the trail: fn(model name, "<seq>:<hash>").
HeadPublisher = Callable[[str, str], None]


def record(event: str, data: dict[str, Any], actor: str | None = None, model_name: str | None = None,
           commit: str | None = None, authenticated: bool | None = None, *,
           publish_head: HeadPublisher | None = None) -> dict[str, Any]:
    """Append an audit event; with ``model_name`` the model's newest head goes to ``publish_head``, the one
    place it is published (what the caller passes, never what the process imported).

    Events for a registered model are recorded through :func:`tunegate.governance.trail.record`, which
    passes the registry's tag (``audit verify`` compares the two). Without ``actor`` the event is
    recorded for the acting identity (authenticated when the tracking server says who we are).
    """
    if actor is None:
        from tunegate.governance.identity import actor_identity

        who = actor_identity()
        actor, authenticated = who.name, who.authenticated
    trail = store()
    if not model_name:
        return trail.append(event, data, actor=actor, authenticated=bool(authenticated), commit=commit)
    with trail.head_lock(model_name):  # heads are written in seq order, whoever appends at the same time
        entry = trail.append(event, data, actor=actor, authenticated=bool(authenticated), commit=commit, model=model_name)
        if publish_head is not None:
            with contextlib.suppress(Exception):  # before the first registration there is no model to tag
                publish_head(model_name, f"{entry['seq']}:{entry['hash']}")
    return entry
