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


def test_the_autoscalers_node_types_are_read_from_its_monitor_on_the_head(tmp_path):
    """Autoscaler v1 reports no node groups to the GCS; its monitor's command line names its
    config (``ray start --autoscaling-config``, ``ray up``), which a driver on the head can read."""
    import subprocess
    import sys

    import yaml

    from cmkd.capacity import node_types_it_can_add

    config = tmp_path / "cluster.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "head_node_type": "head",
                "available_node_types": {
                    "head": {"resources": {"CPU": 0}, "max_workers": 0},
                    "gpu_workers": {"resources": {"GPU": 1}, "min_workers": 0, "max_workers": 8},
                    "cpu_workers": {"resources": {"CPU": 8}, "max_workers": 4},
                    "retired": {"resources": {"CPU": 8}, "max_workers": 0},
                },
            }
        )
    )
    assert node_types_it_can_add() == []  # no autoscaler on this machine
    monitor = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "monitor.py",
         f"--autoscaling-config={config}"]
    )  # fmt: skip
    try:
        import time

        deadline = time.time() + 10
        while node_types_it_can_add() == [] and time.time() < deadline:
            time.sleep(0.1)
        assert node_types_it_can_add() == ["cpu_workers", "gpu_workers"]
    finally:
        monitor.kill()
        monitor.wait()
