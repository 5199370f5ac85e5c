"""One place that seeds every random number generator a run touches."""

from __future__ import annotations


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch
    from transformers import set_seed

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_seed(seed, deterministic=False)
