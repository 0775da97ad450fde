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

import json
import time
from collections.abc import Callable

import ray
from ray.tune.search import ConcurrencyLimiter, Searcher

from cmkd.trial import Resources


def node_types_it_can_add() -> list[str]:
    """The worker node types the cluster's autoscaler can launch; [] on a fixed cluster (a local
    ``ray.init`` one, nodes started by hand) or where Ray reports no autoscaler."""
    from ray._private import ray_constants
    from ray._private.state import state
    from ray.experimental.internal_kv import _internal_kv_get

    try:  # autoscaler v2 (KubeRay) reports its node groups
        groups = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - an older or partial GCS: fall back to the status
        groups = None
    if groups:
        return sorted(groups)
    try:  # autoscaler v1 (`ray up`, the fake multi-node provider): its last status report
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        report = json.loads(raw or b"{}").get("autoscaler_report") or {}
    except (ValueError, RuntimeError):
        return []
    summary = report.get("node_availability_summary") or {}
    return sorted(summary.get("node_availabilities") or {})


def fits_now(resources: Resources) -> int:
    """Trials the cluster's nodes hold now (0 while its trial nodes have not come)."""
    cluster = ray.cluster_resources()
    if resources.gpus_per_worker > 0:
        return int(cluster.get("GPU", 0) // (resources.workers * resources.gpus_per_worker))
    return int(cluster.get("CPU", 0) // (resources.workers * resources.cpus_per_worker))


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
