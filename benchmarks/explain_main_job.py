"""Why momentum and Nesterov collapse on the main job (digits, 64-30-10 sigmoid, quadratic
cost) above an effective step of about 1 while SGD does not: the three rules at matched
effective steps, with the instruments that could tell (docs/results.md, "Why momentum
collapses on digits").

    python benchmarks/explain_main_job.py            # prints the table, writes why.json

SGD runs at η = s, classical momentum and Nesterov (β = 0.9) at η = s (1 − β), for s in 0.5,
1, 2, 4, 8, on the confirm seeds 100-102, 15 epochs, sharpness every epoch; untracked.
"""

from __future__ import annotations

import json
import math

import pandas as pd

import bpexp

STEPS = (0.5, 1, 2, 4, 8)
RULES = ("sgd", "momentum", "nesterov")
SEEDS = (100, 101, 102)


def measure(step: float, rule: str, seed: int) -> dict:
    lr = step if rule == "sgd" else step * 0.1
    overrides = ["tracking.enabled=false", f"optimizer={rule}", f"optimizer.lr={lr}"]
    overrides += [f"seed={seed}", "trainer.epochs=15", "trainer.sharpness_every=1"]
    result = bpexp.run(overrides)
    h = result.history

    def at(column: str, epoch: int) -> float:
        return float(h[column].iloc[epoch]) if column in h else math.nan

    return {
        "step": step,
        "rule": rule,
        "seed": seed,
        "outcome": result.outcome,
        "val_accuracy": at("val/accuracy", -1),
        "saturated_outputs_1": at("saturation/2", 1),
        "wrong_saturated_1": at("wrong_saturation/2", 1),
        "wrong_saturated_end": at("wrong_saturation/2", -1),
        "sharpness_1": at("sharpness", 1),
        "bound": at("sharpness_threshold", 0),
        "grad_norm_b2_1": at("grad_norm/b2", 1),
    }


def main() -> None:
    rows = [measure(s, r, seed) for s in STEPS for r in RULES for seed in SEEDS]
    with open("why.json", "w") as out:
        json.dump(rows, out)
    table = pd.DataFrame(rows).groupby(["step", "rule"], sort=False).mean(numeric_only=True)
    print(table.drop(columns="seed").round(3).to_string())


if __name__ == "__main__":
    main()
