"""Autoscaling, rehearsed on one machine: a sweep on a cluster whose trial nodes start at zero.

Ray's fake multi-node provider runs the real autoscaler against raylets it starts and stops on
this machine. The cluster mirrors cluster/aws.yaml at a small scale: a head for drivers (no CPU,
the ``cmkd_driver`` resource) and one worker type of 1 CPU that starts at 0, up to 3 nodes,
removed after 20 idle seconds. ``python -m cmkd.tune`` attaches to it through ``RAY_ADDRESS``.
Once a trial has finished and a running trial has saved a checkpoint, the node holding that
trial's process is SIGKILLed (its raylet and everything under it). The test prints the timeline:
when each node came and went, when each trial started, ended or was retried. What it showed is
in cluster/README.md.
"""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from test_cluster_e2e import free_ports, stop_processes_under
from test_reliability_node import actors_under, node_env, stop_sweep
from test_reliability_sweep import EPOCH, descendants, end, tune_cmd

from cmkd.data.synth import build_synth

pytestmark = [pytest.mark.ray, pytest.mark.autoscale]
RAY = str(Path(sys.executable).parent / "ray")
EPOCHS = 4
SPACE = f"""\
description: short trials on nodes that come and go
fixed:
  epochs: {EPOCHS}
  steps_per_epoch: 250
  batch_size: 16
params:
  w_fa: {{loguniform: [0.5, 2.0]}}
"""
IDLE_S = 20
START = re.compile(r"\] start (\S+):")
ENDED = re.compile(r"\] (\S+) (finished|stopped by ASHA|FAILED)")
RETRY = re.compile(r"\] (\S+) lost its process or node after epoch (\d+)")


def cluster_config(gcs_port: int) -> dict:
    """The fake provider's cluster: aws.yaml's head and CPU group, 1-CPU nodes, at most 3."""
    return {
        "cluster_name": "rehearsal",
        "max_workers": 3,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",
        },
        "available_node_types": {
            "ray.head.default": {
                "resources": {"CPU": 0, "cmkd_driver": 4},
                "node_config": {},
                "max_workers": 0,
            },
            "cpu_workers": {
                "resources": {"CPU": 1, "object_store_memory": 150 * 1024**2},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 3,
            },
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_S / 60,
        "auth": {},
        "docker": {},
        **{
            k: []
            for k in (
                "initialization_commands",
                "setup_commands",
                "head_setup_commands",
                "worker_setup_commands",
                "head_start_ray_commands",
                "worker_start_ray_commands",
                "cluster_synced_files",
                "rsync_exclude",
                "rsync_filter",
            )
        },  # fmt: skip
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "synth"
    build_synth(out, "synth", seed=0, train_per_class=30, val_per_class=20, test_per_class=20)
    return out


def monitor_of(temp: str) -> psutil.Process:
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if "monitor.py" in cmd and temp in cmd:
                return p
        except (psutil.Error, TypeError):
            continue
    raise AssertionError(f"no autoscaler monitor of {temp}")


def worker_nodes(monitor: psutil.Process) -> dict[int, psutil.Process]:
    """The raylets the autoscaler started (one per worker node), by pid."""
    out = {}
    try:
        procs = monitor.children(recursive=True)
    except psutil.Error:
        return out
    for p in procs:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:  # a removed node's raylet, not reaped yet
                continue
            cmd = p.cmdline()
            if cmd and cmd[0].endswith("/raylet"):
                out[p.pid] = p
        except psutil.Error:
            continue
    return out


def trials_on(raylet: psutil.Process) -> set[str]:
    """The trials whose own process runs under this raylet."""
    return set(actors_under(raylet, "ImplicitFunc").values())


class Watch(threading.Thread):
    """Notes the worker nodes and the trials on them every 0.2 s; once a trial has finished,
    kills the node of a trial that has a checkpoint (1 to EPOCHS-2 epochs reported)."""

    def __init__(self, monitor: psutil.Process, t0: float):
        super().__init__(daemon=True)
        self.monitor, self.t0 = monitor, t0
        self.epochs: dict[str, int] = {}  # trial name -> last epoch reported (main thread)
        self.finished = 0  # trials ended (main thread)
        self.events: list[tuple[float, str]] = []
        self.nodes_now, self.max_nodes, self.max_trials = 0, 0, 0
        self.killed: dict | None = None
        self.done = threading.Event()

    def note(self, text: str) -> None:
        self.events.append((time.time() - self.t0, text))

    def run(self):
        known: dict[int, str] = {}
        while not self.done.is_set():
            nodes = worker_nodes(self.monitor)
            for pid in nodes.keys() - known.keys():
                known[pid] = f"node {len(known) + 1}"
                self.note(f"{known[pid]} up (raylet {pid})")
            for pid in [p for p in known if p not in nodes and not known[p].endswith("gone")]:
                self.note(f"{known[pid]} gone")
                known[pid] += " gone"
            self.nodes_now = len(nodes)
            self.max_nodes = max(self.max_nodes, len(nodes))
            on = {pid: trials_on(r) for pid, r in nodes.items()}
            self.max_trials = max(self.max_trials, sum(len(t) for t in on.values()))
            if self.killed is None and self.finished >= 1:
                for pid, names in on.items():
                    ready = [n for n in names if 1 <= self.epochs.get(n, 0) <= EPOCHS - 2]
                    if ready:
                        self.kill(nodes[pid], known[pid], ready[0])
                        break
            time.sleep(0.2)

    def kill(self, raylet: psutil.Process, node: str, trial: str) -> None:
        self.killed = {"node": node, "trial": trial, "epoch": self.epochs.get(trial, 0)}
        self.note(f"{node} KILLED while it held {trial} (after its epoch {self.killed['epoch']})")
        procs = [raylet, *raylet.children(recursive=True)]
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        # the autoscaler's monitor started them and reaps them in its own time: no long wait
        psutil.wait_procs(procs, timeout=2)


def test_trials_wait_for_nodes_grow_with_them_survive_a_lost_one_and_leave_them_idle(
    bench, tmp_path, capsys
):
    head_tmp = tempfile.mkdtemp(prefix="cra", dir="/tmp")  # Ray's socket paths must stay short
    token = secrets.token_hex(32)
    gcs, dash, client = free_ports(3)
    config = tmp_path / "cluster.json"
    config.write_text(json.dumps(cluster_config(gcs)))
    space = tmp_path / "short.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "runs"
    env = {
        **node_env(head_tmp, token),
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    }
    proc, watch, lines, monitor = None, None, [], None
    t0 = time.time()
    try:
        done = subprocess.run(
            [RAY, "start", "--head", f"--autoscaling-config={config}", "--num-cpus", "0",
             "--resources", '{"cmkd_driver": 4}', "--node-ip-address", "127.0.0.1",
             "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
             "--ray-client-server-port", str(client), "--temp-dir", head_tmp,
             "--object-store-memory", str(150 * 1024**2), "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        monitor = monitor_of(head_tmp)
        watch = Watch(monitor, t0)
        watch.start()
        cmd = tune_cmd(space, bench, storage, "grow", "--num-samples", "3", "--final-seeds", "0",
                       "--wandb", "disabled")  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"},
        )  # fmt: skip
        deadline = time.time() + 420
        for line in proc.stdout:
            lines.append(line)
            if (m := EPOCH.search(line)) is not None:
                watch.epochs[m.group(1)] = int(m.group(2))
            for pattern, what in ((START, "start"), (ENDED, None), (RETRY, "retried")):
                if (m := pattern.search(line)) is not None:
                    watch.note(f"{m.group(1)} {what or m.group(2)}")
                    if pattern is ENDED:
                        watch.finished += 1
            if "sweep 'grow'" in line:
                watch.note(f"sweep starts with {watch.nodes_now} worker node(s)")
            assert time.time() < deadline, "".join(lines[-40:])
        proc.wait(timeout=60)
        watch.note("sweep ended")
        ended_at = time.time()
        while watch.nodes_now > 0 and time.time() < ended_at + IDLE_S + 45:
            time.sleep(0.5)
    finally:
        stop_sweep(watch, proc)
        if monitor is not None:
            end(descendants(monitor.pid))  # the worker nodes' processes
        stop_processes_under(head_tmp)
        if not os.environ.get("CMKD_KEEP_RAY_LOGS"):
            shutil.rmtree(head_tmp, ignore_errors=True)
    out = "".join(lines)
    timeline = "\n".join(f"{t:6.1f}s  {text}" for t, text in watch.events)
    (tmp_path / "timeline.txt").write_text(f"{timeline}\n\n{out}")
    with capsys.disabled():
        print(f"\nautoscaling rehearsal, timeline:\n{timeline}\n", flush=True)
    assert proc.returncode == 0, out[-5000:]
    # the sweep saw an autoscaling cluster and sized itself for the nodes to come
    assert "growing as its autoscaler adds nodes" in out, out[:2000]
    assert "x 1 CPU per trial" in out, out[:2000]  # not a tenth of a CPU from a CPU-less head
    # the first trials waited for nodes without failing: none failed, every one ended
    assert "FAILED" not in out, out[-5000:]
    results = json.loads((storage / "grow" / "results.json").read_text())
    assert len(results["trials"]) == 5 and not any(t["error"] for t in results["trials"])
    # concurrency grew with the nodes: more trials at once than the head (no CPU) could hold
    assert watch.max_nodes >= 2 and watch.max_trials >= 2, timeline
    # a node lost while it held a trial: the trial was retried from its checkpoint
    assert watch.killed is not None, timeline
    trial = watch.killed["trial"]
    after = out.split(f"{trial} lost its process or node", 1)
    assert len(after) == 2, out[-5000:]
    resumed = [int(m.group(2)) for m in EPOCH.finditer(after[1]) if m.group(1) == trial]
    assert resumed and resumed[0] > 1, out[-5000:]  # not from epoch 1: from its checkpoint
    assert resumed[-1] == EPOCHS or f"{trial} stopped by ASHA" in after[1]
    # the trials that had finished were kept: each started and ended exactly once
    for name in {m.group(1) for m in ENDED.finditer(after[0])}:
        assert out.count(f"start {name}:") == 1, name
    # and the idle nodes were removed once the sweep no longer needed them
    assert watch.nodes_now == 0, timeline
    assert sum("gone" in text for _, text in watch.events) >= watch.max_nodes, timeline
