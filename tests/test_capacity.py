"""Trials at once on a cluster that grows (cmkd/capacity.py), and requests sized before it has."""

from __future__ import annotations

import pickle

from ray.tune.search import Searcher

from cmkd.capacity import GrowingLimit
from cmkd.trial import for_machine


class Numbered(Searcher):
    def __init__(self):
        super().__init__(metric="best_val_acc", mode="max")

    def suggest(self, trial_id):
        return {"trial": trial_id}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


class Nodes:
    """What the cluster holds now, changed by the test as nodes come and go."""

    def __init__(self):
        self.n = 0

    def __call__(self):
        return self.n


def started(limit: GrowingLimit, count: int, prefix: str) -> list:
    return [limit.suggest(f"{prefix}{i}") for i in range(count)]


def test_trials_follow_the_nodes_with_as_many_waiting_for_the_autoscaler():
    nodes = Nodes()
    limit = GrowingLimit(Numbered(), cap=6, fits=nodes, every_s=0.0)
    # no node yet: one trial waits, so the autoscaler sees demand (a fixed limit sized from a
    # head with no CPU was 1 for the whole sweep)
    assert [s is not None for s in started(limit, 2, "a")] == [True, False]
    nodes.n = 1  # the first node came: its trial runs, one more waits
    assert [s is not None for s in started(limit, 2, "b")] == [True, False]
    nodes.n = 2  # two nodes: two run and two wait
    assert [s is not None for s in started(limit, 3, "c")] == [True, True, False]
    nodes.n = 5  # never more than the cap (the budget or --max-concurrent)
    assert [s is not None for s in started(limit, 3, "d")] == [True, True, False]
    assert len(limit.live_trials) == 6
    limit.on_trial_complete("a0")
    nodes.n = 0  # nodes lost: no new trial until the running ones end below one waiting
    assert limit.suggest("e0") is None


def test_the_limit_asks_the_cluster_at_most_every_few_seconds_and_survives_pickling():
    calls = []
    limit = GrowingLimit(Numbered(), cap=4, fits=lambda: calls.append(1) or 2, every_s=60.0)
    for i in range(5):
        limit.suggest(f"t{i}")
    assert len(calls) == 1  # asked once, then cached
    again = pickle.loads(pickle.dumps(GrowingLimit(Numbered(), cap=3, fits=Nodes())))
    assert again.max_concurrent == 1 and again._cap == 3  # resumed sweeps keep their cap


def test_a_cluster_with_no_cpu_yet_gets_whole_cpus_per_worker():
    # the head of an autoscaling cluster holds drivers only: 0 CPUs when the sweep starts
    assert for_machine({"cmkd_driver": 4}, 1, 0.0, None).cpus_per_worker == 1.0
    assert for_machine({"CPU": 0.0}, 2, 0.0, None).cpus_per_worker == 1.0
    # a small fixed machine still shares its CPUs out (2 workers on 2 CPUs: 0.5 each)
    assert for_machine({"CPU": 2.0}, 2, 0.0, None).cpus_per_worker == 0.5
