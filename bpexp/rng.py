"""Independent random streams derived from the one ``seed`` of an experiment.

Each purpose gets its own stream, so the initial weights, the batch order and the probe set
depend on the seed alone, never on the optimizer or its settings: every arm of a sweep with the
same seed starts from identical weights and sees identical mini-batches (a paired comparison).
"""

from __future__ import annotations

import numpy as np

PURPOSES = {"init": 1, "shuffle": 2, "probe": 3, "split": 4, "eval_train": 5, "sharpness": 6}


def stream(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), PURPOSES[purpose]]))
