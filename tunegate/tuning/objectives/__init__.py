"""Training objectives: what a run optimises. ``train.method`` picks the adapter (lora, dora, qlora,
full), ``train.objective`` one of these (``sft``; ``dpo`` on preference pairs).

An objective builds its dataset from canonical records, its trainer config and its trainer
(:class:`Objective`); the shared code in :mod:`tunegate.tuning.training` does everything else, the same
for each. Registering one is one line, ``register(MyObjective())``; README: "Adding a training objective".
"""

from tunegate.tuning.objectives.base import (
    Objective,
    Record,
    TrainerParts,
    UnknownObjective,
    get,
    names,
    register,
    unregister,
)
from tunegate.tuning.objectives.dpo import DPO
from tunegate.tuning.objectives.sft import SFT

register(SFT())
register(DPO())

__all__ = ["Objective", "Record", "TrainerParts", "UnknownObjective", "get", "names", "register", "unregister", "SFT", "DPO"]
