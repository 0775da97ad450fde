"""Trials at once on a cluster that grows: as many as its nodes hold now, plus as many waiting.

A sweep sized from the nodes present when it starts is sized too small on an autoscaling
cluster: worker groups start at zero, so the head alone would fix the sweep at one trial at a
time for its whole run, and no waiting trial would ever ask the autoscaler for a node. Where the
cluster's autoscaler can launch nodes, the sweep's searcher is wrapped in :class:`GrowingLimit`
instead of a fixed ``max_concurrent_trials``: the trials it lets run are those the cluster's
resources hold now and as many again waiting for nodes (at least one), up to the budget or
``--max-concurrent``. The waiting trials are the demand the autoscaler answers; as nodes come,
more trials start; as the budget runs out, nodes fall idle and the autoscaler removes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ray
from ray.tune.search import ConcurrencyLimiter, Searcher

from cmkd.trial import Resources


def node_types_it_can_add() -> list[str]:
    """The worker node types the cluster's autoscaler can launch; [] where none is known (a local
    ``ray.init`` cluster, nodes started by hand, an autoscaler this process cannot see)."""
    from ray._private.state import state

    try:  # autoscaler v2 reports its node groups to the GCS
        groups = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - an older or partial GCS: look for the monitor instead
        groups = None
    if groups:
        return sorted(groups)
    return _monitor_node_types()


def _monitor_node_types() -> list[str]:
    """Autoscaler v1 (``ray up``, ``ray start --autoscaling-config``, the fake multi-node
    provider) reports no node groups: its config is read from the monitor's command line, which
    a driver on the head (where ``ray job submit`` runs it) can see."""
    import psutil
    import yaml

    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
        except psutil.Error:
            continue
        if not any("monitor.py" in c for c in cmd):
            continue
        for arg in cmd:
            if arg.startswith("--autoscaling-config="):
                try:
                    config = yaml.safe_load(open(arg.split("=", 1)[1]))
                    types = config["available_node_types"]
                    head = config.get("head_node_type")
                    return sorted(
                        name for name, spec in types.items()
                        if name != head and int(spec.get("max_workers", 0)) > 0
                    )  # fmt: skip
                except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
                    return []
    return []


def grows(resources: Resources) -> bool:
    """Whether the sweep's trials follow the cluster's nodes: its autoscaler can add nodes, or the
    nodes present cannot hold a single trial (they can only be waited for)."""
    return fits_now(resources) == 0 or bool(node_types_it_can_add())


def fits_now(resources: Resources) -> int:
    """Trials the cluster's nodes hold now (0 while its trial nodes have not come)."""
    return resources.fits(ray.cluster_resources())


class GrowingLimit(ConcurrencyLimiter):
    """A ``ConcurrencyLimiter`` whose limit follows the cluster: ``n`` trials running where the
    nodes hold ``n``, and ``max(n, 1)`` more waiting for nodes, never more than ``cap``.

    ``fits()`` is asked at most every ``every_s`` seconds (it asks the GCS)."""

    def __init__(self, searcher: Searcher, cap: int, fits: Callable[[], int], every_s: float = 2.0):
        self._cap, self._fits, self._every = max(1, cap), fits, every_s
        self._asked_at, self._limit = float("-inf"), 1
        super().__init__(searcher, max_concurrent=self._cap)

    @property
    def max_concurrent(self) -> int:
        now = time.time()  # wall clock: the limiter is pickled with the tuner and resumed
        if now - self._asked_at >= self._every:
            n = self._fits()
            self._asked_at, self._limit = now, max(1, min(self._cap, n + max(n, 1)))
        return self._limit

    @max_concurrent.setter
    def max_concurrent(self, value: int) -> None:
        self._cap = max(1, value)
