"""The capability tasks tunegate ships: lm-evaluation-harness task YAMLs over local files only.

``eval.capability.tasks`` names them by file stem (``story_continuation``, ``piqa``, ``mmlu_redux``, ``gsm8k``);
a task of your own is one more YAML file, named in params by its path. Each file here is plain lm-eval YAML
(``lm_eval --tasks NAME --include_path tunegate/evaluation/capability_tasks`` runs it too); the two sets whose
files need more than ``dataset_path: json`` (MMLU-Redux's mixed CSVs, PIQA's separate label file) read them
through ``custom_dataset: !function prepare.<set>`` (:mod:`.prepare`), their paths in ``metadata``.
"""

from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent


def shipped() -> dict[str, Path]:
    """Task name (file stem) -> its YAML file."""
    return {p.stem: p for p in sorted(DIRECTORY.glob("*.yaml"))}
