"""The seam between the shared training code and an objective: what an objective is, and the registry.

An objective decides what training optimises: the dataset its trainer takes (built from canonical
records), the trainer's config class and its own settings, and the trainer. Everything else is
:func:`tunegate.tuning.training.train_model`'s and the same for every objective: seeding, the model
and its adapter (``train.method``), the arguments every trainer shares (steps, learning rate, seeds,
checkpointing), resume from the latest checkpoint, tunegate's step/checkpoint callback and quiet
progress bar, saving the model with its stop tokens, and the :class:`TrainResult` a run logs.

Nothing here imports ``tunegate.params``: it checks ``train.objective`` against this registry, so an
import back would be a circle. ``params`` below is always the validated ``tunegate.params.Params``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

Record = dict[str, Any]  # a canonical chat record (tunegate.data.formats)


@dataclass(frozen=True)
class TrainerParts:
    """What the shared code hands :meth:`Objective.trainer`: pass each on to the trainer as it is."""

    params: Any  # tunegate.params.Params
    model: PreTrainedModel  # the base model in the dtype (and quantisation) train.method needs
    tokenizer: PreTrainedTokenizerBase  # with the chat template the data was rendered with
    args: TrainingArguments  # from Objective.config: output_dir is the run's checkpoints/ directory
    train_dataset: Dataset  # from Objective.dataset
    peft_config: PeftConfig | None  # LoRA/DoRA/QLoRA's adapter for the trainer to wrap the model in; None: full
    callbacks: list[TrainerCallback]  # tunegate's: per-step metrics, checkpoint logging, checkpoints by time
    # How batches are laid out (tunegate.tuning.packing.resolve_batching): "rows" asks the trainer for
    # packing.PackedRowsCollator; "flattened" and "packed" are in args (padding_free, packing) already.
    batching: str = "padded"
    # A preference objective's frozen reference when it is a separate model (full weights); None: an adapter's
    # frozen copy inside ``model`` (TRL's ``ref`` adapter), or no reference at all (SFT).
    ref_model: PreTrainedModel | None = None


class Objective(Protocol):
    """A training objective. ``name`` is what ``train.objective`` says; registering it is one line,
    ``register(MyObjective())``. The trainer it builds must be a ``transformers.Trainer`` (TRL's are):
    the shared code resumes it, swaps its progress callbacks and reads its state and arguments."""

    name: str
    # True: trains on preference pairs (tunegate.data.preference) from a tuned model (preference.start_from), its
    # reference that model, frozen; False: on chat records from the base model.
    preference: bool

    def dataset(self, params: Any, tokenizer: PreTrainedTokenizerBase, records: list[Record]) -> Dataset:
        """The training dataset, from the canonical records (rendered with ``tokenizer``'s template)."""
        ...

    def config(self, params: Any, shared: dict[str, Any]) -> TrainingArguments:
        """The trainer's config: its config class over ``shared`` (the arguments every objective takes, from
        :func:`tunegate.tuning.training.shared_arguments`) plus this objective's own settings."""
        ...

    def trainer(self, parts: TrainerParts) -> Trainer:
        """The trainer, built from the shared parts (unstarted: the shared code trains or resumes it)."""
        ...


class UnknownObjective(ValueError):
    """``train.objective`` names no registered objective."""


_REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Make ``objective`` selectable as ``train.objective: <its name>``; a name is registered once."""
    name = objective.name
    if name in _REGISTRY and _REGISTRY[name] is not objective:
        raise ValueError(f"a training objective named {name!r} is already registered")
    _REGISTRY[name] = objective
    return objective


def unregister(name: str) -> None:
    """Remove the objective ``name`` (a test's own, when it is done)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered objectives' names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> Objective:
    """The objective ``train.objective`` names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownObjective(f"train.objective {name!r} is not a training objective; allowed: "
                               f"{', '.join(names()) or 'none registered'}") from None
