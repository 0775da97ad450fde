"""Frees the CPUs of Train worker groups whose trial is gone.

Ray 2.60's Train leaves a worker group's placement group reserved when the trial that owned it
is stopped at the wrong moment (ASHA stopping a trial while its controller shuts down; a job
stopped while a trial starts): its cleaner actor has already exited, so nobody removes it. On a
small cluster the next trials then wait for those CPUs for ever. This reaper, run by the sweep's
driver, removes a placement group of the sweep's own job that reserves CPUs none of its bundles
has used for ``idle_s`` seconds. A live worker group uses its CPUs within seconds of being
reserved (Train itself gives up after 60 s without its workers), and Tune's trial groups here
reserve no CPU, so neither is touched; nor is any other job's group on a shared cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import ray
from ray.util.placement_group import PlacementGroup, remove_placement_group


def idle_cpu_groups(table: dict, available: dict, job_hex: str) -> set[str]:
    """Ids of this job's CREATED placement groups that reserve CPUs and use none of them.

    table: ``ray.util.placement_group_table()``; available: ``ray.available_resources()``.
    A placement group id ends with the id of the job that created it.
    """
    idle = set()
    for pg_id, info in table.items():
        if info.get("state") != "CREATED" or not pg_id.endswith(job_hex):
            continue
        cpus = sum(b.get("CPU", 0.0) for b in info.get("bundles", {}).values())
        if cpus > 0 and available.get(f"CPU_group_{pg_id}", 0.0) >= cpus - 1e-6:
            idle.add(pg_id)
    return idle


class IdleGroupReaper:
    """A daemon thread: every ``every_s`` seconds, remove this job's CPU placement groups that
    have stayed idle for ``idle_s`` seconds; ``say`` is told of each one removed."""

    def __init__(self, idle_s: float = 60.0, every_s: float = 5.0, say: Callable = print):
        self.idle_s, self.every_s, self.say = idle_s, every_s, say
        self.removed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cmkd-group-reaper", daemon=True)
        self._job = ray.get_runtime_context().get_job_id()

    def __enter__(self) -> IdleGroupReaper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 5)

    def _loop(self) -> None:
        first_seen: dict[str, float] = {}
        while not self._stop.wait(self.every_s):
            try:
                idle = idle_cpu_groups(
                    ray.util.placement_group_table(), ray.available_resources(), self._job
                )
            except Exception:  # noqa: BLE001 - a missed poll is retried at the next one
                continue
            now = time.monotonic()
            first_seen = {k: first_seen.get(k, now) for k in idle}
            for pg_id, since in list(first_seen.items()):
                if now - since < self.idle_s:
                    continue
                try:
                    remove_placement_group(
                        PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id)))
                    )
                except Exception:  # noqa: BLE001
                    continue
                del first_seen[pg_id]
                self.removed.append(pg_id)
                self.say(
                    f"released the CPUs of a stopped trial's worker group (placement group "
                    f"{pg_id[:12]}, unused for {now - since:.0f} s)"
                )
