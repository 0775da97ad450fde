"""The reaper of idle Train worker groups: frees a leaked group's CPUs, leaves live ones alone."""

import shutil
import tempfile
import time

import pytest

from cmkd.placement import IdleGroupReaper, idle_cpu_groups

JOB = "05000000"


def test_only_this_jobs_created_groups_with_all_their_cpus_free_are_idle():
    table = {
        "aa" + JOB: {"state": "CREATED", "bundles": {0: {"CPU": 1.0}, 1: {"CPU": 1.0}}},
        "bb" + JOB: {"state": "CREATED", "bundles": {0: {"CPU": 1.0}}},  # a worker holds it
        "cc" + JOB: {"state": "CREATED", "bundles": {0: {"memory": 1.0}}},  # a Tune trial's
        "dd" + JOB: {"state": "PENDING", "bundles": {0: {"CPU": 1.0}}},
        "ee06000000": {"state": "CREATED", "bundles": {0: {"CPU": 1.0}}},  # another job's
    }
    available = {
        f"CPU_group_aa{JOB}": 2.0,
        f"CPU_group_bb{JOB}": 0.0,
        f"CPU_group_dd{JOB}": 1.0,
        "CPU_group_ee06000000": 1.0,
    }
    assert idle_cpu_groups(table, available, JOB) == {"aa" + JOB}


@pytest.mark.ray
def test_a_leaked_group_is_removed_and_a_used_one_kept():
    import ray
    from ray.util.placement_group import placement_group, placement_group_table
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    tmp = tempfile.mkdtemp(prefix="cr", dir="/tmp")
    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False, _temp_dir=tmp)
    try:
        job = ray.get_runtime_context().get_job_id()
        leaked = placement_group([{"CPU": 1}])
        used = placement_group([{"CPU": 1}])
        trialish = placement_group([{"memory": 1}])
        ray.get([leaked.ready(), used.ready(), trialish.ready()])
        assert leaked.id.hex().endswith(job)  # what the reaper relies on

        @ray.remote(num_cpus=1)
        class Worker:
            def ping(self):
                return 1

        worker = Worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(used)).remote()
        assert ray.get(worker.ping.remote()) == 1
        said = []
        with IdleGroupReaper(idle_s=2, every_s=0.5, say=said.append) as reaper:
            deadline = time.monotonic() + 30
            while not reaper.removed and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(3)  # long enough for the used group to be reaped too, were it idle
        assert reaper.removed == [leaked.id.hex()]
        assert placement_group_table(leaked)["state"] == "REMOVED"
        assert placement_group_table(used)["state"] == "CREATED"
        assert placement_group_table(trialish)["state"] == "CREATED"
        assert ray.available_resources().get("CPU", 0) == 1.0  # the leaked CPU is back
        assert "released the CPUs" in said[0]
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
