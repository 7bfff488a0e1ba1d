"""Workloads: named problems to compare optimizers on, each with a fixed validation target.

A workload (``conf/workload/<name>.yaml``) sets the data, the network, the cost, the batch
size and the epochs of a run, and names a ``target`` of ``val/accuracy``: a run reaches the
workload when its yardstick first gets there, and the optimizers are compared by how many
steps that takes (:func:`bpexp.statistics.performance_profile`). The target is fixed in the
file once measured (from the best arm's confirm runs, see ``sweeps/sweep/benchmark.yaml``), so
that a later run cannot move the goal; it does not change what a run computes, so it is left
out of the config hash (changing it reruns nothing).

``python -m bpexp sweep=benchmark`` tunes every optimizer on every workload with the same
budget and confirms each on the same fresh seeds (docs/benchmark.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkloadConfig:
    """The Hydra group ``workload``; the other keys a workload sets are the usual groups'."""

    name: str = ""  # "" when no workload is selected
    target: float | None = None  # val/accuracy to reach; null: not measured yet
