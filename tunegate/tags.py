"""The names of the MLflow tags tunegate writes: on a training run, on a registered model version, and on
the registered model. Users search runs and dashboards read versions by these names, so they never change;
a name ending in ``.`` is a prefix, completed by the name after it.

Plain constants, importable from every stage. (The Prefect event labels and resource ids of the data
events, ``tunegate.md5`` and ``tunegate.dataset.<path>``, are not MLflow tags: they live in
:mod:`tunegate.operations.scheduling`.)
"""

from __future__ import annotations

# --- on a training run --------------------------------------------------------------------------

# what started it, on which code and params
TRIGGER = "tunegate.trigger"  # "manual" (the default when absent), "schedule", "data:<resource>@<md5>"
INITIATOR = "tunegate.initiator"  # who started it (also on the registered version)
INITIATOR_AUTHENTICATED = "tunegate.initiator_authenticated"  # "true" | "false"
MODEL_NAME = "tunegate.model_name"  # the registered model the run trains for
PARAMS_FILE = "tunegate.params_file"
PARAMS_SHA256 = "tunegate.params_sha256"
CODE_FINGERPRINT = "tunegate.code_fingerprint"
GIT_DIRTY = "tunegate.git_dirty"  # "true" | "false"
PREFECT_FLOW_RUN_ID = "tunegate.prefect_flow_run_id"

# the process running it (``tunegate status`` tells a crashed run by them)
HOST = "tunegate.host"
PID = "tunegate.pid"
PID_STARTED = "tunegate.pid_started"  # the process's start time, so a reused pid is not taken for it

# the run queue
QUEUE = "tunegate.queue"  # "waiting" | "holding"
QUEUE_SINCE = "tunegate.queue_since"
QUEUED_BEHIND = "tunegate.queued_behind"  # the run ids it waited for, comma-separated
QUEUE_WAITED_S = "tunegate.queue_waited_s"

# the data
DATA_MD5 = "tunegate.data_md5"  # also on the registered version
SOURCE_MD5_PREFIX = "tunegate.source_md5."  # + source name
CANONICAL_TRAIN_MD5 = "tunegate.canonical_train_md5"
CANONICAL_EVAL_MD5 = "tunegate.canonical_eval_md5"
VALIDATION = "tunegate.validation"  # "passed" | "failed"
FRESHNESS = "tunegate.freshness"  # why the run had (or had nothing) to do
MATCHED_VERSION = "tunegate.matched_version"  # the version whose inputs a run with nothing to do matched

# training
LATEST_CHECKPOINT = "tunegate.latest_checkpoint"
CHAT_TEMPLATE = "tunegate.chat_template"  # what rendered the data, not what params asked
STOP_TOKEN_IDS = "tunegate.stop_token_ids"  # comma-separated

# the preference stage (train.objective: dpo)
PREFERENCE_TRAIN_MD5 = "tunegate.preference_train_md5"  # the canonical pair files the stage tuned and was scored on
PREFERENCE_EVAL_MD5 = "tunegate.preference_eval_md5"
PREFERENCE_SOURCE_MD5_PREFIX = "tunegate.preference_source_md5."  # + source name
PARENT = "tunegate.parent"  # what the preference stage started from: "sft" (this run) or "version:<n>"; also on the version
PARENT_VERSION = "tunegate.parent_version"  # the registered version it started from ("" for this run's SFT model)
REFERENCE = "tunegate.reference"  # the DPO reference: always the parent, frozen ("parent:<what>")
REGISTERED_STAGE = "tunegate.registered_stage"  # "preference" | "sft": which of the run's models was registered
MODEL_ARTIFACT = "tunegate.model_artifact"  # on the version: the run's artifact path of its tunegate model directory

# evaluation
BASELINE_SOURCE = "tunegate.baseline_source"  # also on the registered version
BASELINE_VERSION = "tunegate.baseline_version"  # also on the registered version ("" for the base model)
WAITING_VERSION = "tunegate.waiting_version"  # the candidate waiting for review when the run started
EVAL_MD5_PREFIX = "tunegate.eval_md5."  # + eval set name
JUDGE_PREFIX = "tunegate.judge."  # + kind, model, base_url, path, files_sha256, prompt_sha256, decoding: who judged, how
EVAL_KEY_PREFIX = "tunegate.eval_key."  # + role: the evaluation cache key's digest
EVAL_MODEL_PREFIX = "tunegate.eval_model."  # + role: the model part of the key, readable
EVAL_REUSED_FROM_PREFIX = "tunegate.eval_reused_from."  # + role: the run the evaluation was read from ("" when computed)

# the outcome
GATE = "tunegate.gate"  # "passed" | "failed" (also on the registered version)
GATE_CHECK_PREFIX = "tunegate.gate.check."  # + two-digit index: the gate's reasons, in order
REGISTERED_VERSION = "tunegate.registered_version"
KEPT_WAITING_VERSION = "tunegate.kept_waiting_version"  # the waiting candidate the run left in place
OUTCOME = "tunegate.outcome"  # the summary's outcome, e.g. "registered", "nothing_to_do", "failed"
FAILURE = "tunegate.failure"  # why the run failed

# --- on a registered model version ---------------------------------------------------------------

RUN_ID = "tunegate.run_id"  # the training run
COMMIT = "tunegate.commit"
STATE = "tunegate.state"  # "champion" | "previous" | "rejected" | "rolled_back" | "failed_run"
APPROVAL_PREFIX = "tunegate.approval."  # + reviewer: the approval, JSON
REJECTION = "tunegate.rejection"  # the rejection, JSON
# and, as on the run: INITIATOR, DATA_MD5, GATE, BASELINE_SOURCE, BASELINE_VERSION; AUDIT_HEAD on the version an approval made champion

# --- on a registered model --------------------------------------------------------------------------

AUDIT_HEAD = "tunegate.audit_head"  # the model's newest audit entry, "<seq>:<hash>" (``tunegate audit verify``)
