"""A second Ray node lost while it holds a running trial's Train worker, with real processes.

Two nodes are started here on 127.0.0.1 with ``ray start``, each in its own short temp dir: a
head that carries the ``cmkd_driver`` resource (as on cluster/*.yaml, where trial actors keep to
such nodes) and a second node without it, 1 CPU each. ``python -m cmkd.tune`` attaches to them
through ``RAY_ADDRESS``. Once the second node holds the ``RayTrainWorker`` of a trial that has
saved a checkpoint, every process of that node is SIGKILLed: its raylet and everything under it,
as when a machine is lost. Only processes started here are ended, by pid. What it showed is in
docs/RELIABILITY.md.
"""

import json
import os
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
from test_reliability_sweep import DONE, EPOCH, descendants, end, tune_cmd

from cmkd.data.synth import build_synth

pytestmark = pytest.mark.ray
RAY = str(Path(sys.executable).parent / "ray")
EPOCHS = 4
# The two reference trials only (--num-samples 0): neither is cut by ASHA, so both run every
# epoch, and on two 1-CPU nodes they run at once, one Train worker on each node. Epochs last
# some seconds, so the second node can be lost mid-run, after a checkpoint.
SPACE = f"""\
description: two long reference trials, one Train worker on each node
fixed:
  epochs: {EPOCHS}
  steps_per_epoch: 1000
  batch_size: 16
params:
  w_fa: {{loguniform: [0.5, 2.0]}}
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "synth"
    build_synth(out, "synth", seed=0, train_per_class=30, val_per_class=20, test_per_class=20)
    return out


def node_env(temp: str, token: str) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
    return {
        **e,
        "PYTHONUNBUFFERED": "1",
        "RAY_TMPDIR": temp,
        # A token of this test's own for every node and the driver (a second node joins only
        # with the head's token; without RAY_AUTH_MODE, `ray start --head` would pick up one
        # from ~/.ray and the second node none).
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # The GCS declares a node dead after this many failed health checks this far apart:
        # about 1.5 s instead of Ray's default 15 s and more.
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_timeout_ms": "500",
        "RAY_health_check_failure_threshold": "3",
        "RAY_health_check_initial_delay_ms": "0",
    }


def start_node(temp: str, token: str, args: list[str]) -> None:
    done = subprocess.run(
        [RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
         "--object-store-memory", str(200 * 1024**2), "--temp-dir", temp,
         "--disable-usage-stats", *args],
        env=node_env(temp, token), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def actors_under(raylet: psutil.Process, title: str) -> dict[int, str]:
    """The Ray actors of this process title under this raylet: pid -> the name of its working
    dir (a Train worker's is its run, ``train-<trial id>``; a trial's own process's, its trial)."""
    out = {}
    try:
        procs = raylet.children(recursive=True)
    except psutil.Error:
        return out
    for p in procs:
        try:
            if title in " ".join(p.cmdline()):
                out[p.pid] = Path(p.cwd()).name
        except psutil.Error:
            continue
    return out


def train_workers(raylet: psutil.Process) -> dict[int, str]:
    """The Train workers under this raylet: pid -> the Train run each works for."""
    return actors_under(raylet, "RayTrainWorker")


def raylet_of(temp: str) -> psutil.Process:
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if cmd and cmd[0].endswith("/raylet") and any(temp in part for part in cmd):
                return p
        except (psutil.Error, TypeError):
            continue
    raise AssertionError(f"no raylet of {temp}")


def kill_node(raylet: psutil.Process, temp: str) -> list[psutil.Process]:
    """SIGKILL a node at once: its raylet, every process under it, anything else naming its dir."""
    procs = [raylet, *raylet.children(recursive=True)]
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p not in procs and any(temp in part for part in p.info["cmdline"] or []):
                procs.append(p)
        except (psutil.Error, TypeError):
            continue
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=15)
    return procs


def stop_sweep(watch: threading.Thread | None, proc: subprocess.Popen | None) -> None:
    """End a test's watcher thread, then the sweep's command and every process it started."""
    if watch is not None:
        watch.done.set()
        watch.join(timeout=10)
    if proc is not None:
        leftover = descendants(proc.pid)
        if proc.poll() is None:
            proc.kill()
        end(leftover)


class Watch(threading.Thread):
    """Notes every Train worker of both nodes (every 0.2 s) and kills the second node once it
    holds the worker of a trial that has reported a checkpointed epoch and has two to go."""

    def __init__(self, head: psutil.Process, node: psutil.Process, node_tmp: str):
        super().__init__(daemon=True)
        self.head, self.node, self.node_tmp = head, node, node_tmp
        self.epochs: dict[str, int] = {}  # trial id -> last epoch it reported (main thread)
        self.seen: set[tuple[str, int, str]] = set()  # (head|node, pid, Train run)
        self.killed: dict | None = None
        self.kill_at: float | None = None
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            on_head, on_node = train_workers(self.head), train_workers(self.node)
            self.seen |= {("head", pid, run) for pid, run in on_head.items()}
            self.seen |= {("node", pid, run) for pid, run in on_node.items()}
            if self.killed is None:
                for pid, run in on_node.items():
                    trial_id = run.removeprefix("train-")
                    epoch = self.epochs.get(trial_id, 0)
                    if 1 <= epoch <= EPOCHS - 2:
                        self.kill_at = time.time()
                        procs = kill_node(self.node, self.node_tmp)
                        self.killed = {
                            "trial_id": trial_id,
                            "worker": pid,
                            "epoch": epoch,
                            "pids": [p.pid for p in procs],
                        }
                        break
            time.sleep(0.2)


def controller_log(logs: Path, run: str) -> list[str]:
    """What Train's controller of this run logged (its JSON lines under the head's logs/train)."""
    out = []
    for f in sorted(logs.glob("train/ray-train-app-controller-*.log")):
        for line in f.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("run_name") == run:
                out.append(record.get("message", ""))
    return out


def test_a_lost_node_takes_a_train_worker_and_its_trial_resumes_on_the_head(bench, tmp_path):
    head_tmp = tempfile.mkdtemp(prefix="crh", dir="/tmp")  # Ray's socket paths must stay short
    node_tmp = tempfile.mkdtemp(prefix="crn", dir="/tmp")
    token = secrets.token_hex(32)
    (gcs, dash, head_nm, head_om, client, head_al, head_ag, head_re, head_me,
     node_nm, node_om, node_al, node_ag, node_re, node_me) = free_ports(15)  # fmt: skip
    space = tmp_path / "long.yaml"
    space.write_text(SPACE)
    storage = tmp_path / "runs"
    logs = tmp_path / "head-logs"
    proc, watch, lines = None, None, []
    try:
        # The dashboard as on a real head: without it Ray serves no State API and Train's
        # placement group cleaner cannot free the CPUs of a trial Tune stopped.
        start_node(
            head_tmp,
            token,
            ["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dash), "--node-manager-port", str(head_nm),
             "--object-manager-port", str(head_om), "--ray-client-server-port", str(client),
             "--dashboard-agent-listen-port", str(head_al), "--dashboard-agent-grpc-port",
             str(head_ag), "--runtime-env-agent-port", str(head_re),
             "--metrics-export-port", str(head_me), "--resources", '{"cmkd_driver": 4}'],
        )  # fmt: skip
        start_node(
            node_tmp,
            token,
            ["--address", f"127.0.0.1:{gcs}", "--include-log-monitor", "false",
             "--node-manager-port", str(node_nm), "--object-manager-port", str(node_om),
             "--dashboard-agent-listen-port", str(node_al), "--dashboard-agent-grpc-port",
             str(node_ag), "--runtime-env-agent-port", str(node_re),
             "--metrics-export-port", str(node_me)],
        )  # fmt: skip
        head_raylet, node_raylet = raylet_of(head_tmp), raylet_of(node_tmp)
        node_args = node_raylet.cmdline()
        assert f"--node_manager_port={node_nm}" in node_args
        (node_id,) = [a.split("=", 1)[1] for a in node_args if a.startswith("--node_id=")]
        watch = Watch(head_raylet, node_raylet, node_tmp)
        watch.start()
        cmd = tune_cmd(
            space, bench, storage, "lost", "--num-samples", "0", "--final-seeds", "0",
            "--wandb", "disabled", "--runner", "train",  # the Ray Train path: a worker is lost
        )  # fmt: skip
        env = {**node_env(head_tmp, token), "RAY_ADDRESS": f"127.0.0.1:{gcs}"}
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        deadline = time.time() + 300
        for line in proc.stdout:
            lines.append(line if watch.kill_at is None else f"[after the kill] {line}")
            m = EPOCH.search(line)
            if m:
                watch.epochs[m.group(1).rsplit("-", 1)[1]] = int(m.group(2))
            assert time.time() < deadline, "".join(lines[-40:])
        proc.wait(timeout=60)
    finally:
        stop_sweep(watch, proc)
        for temp in (node_tmp, head_tmp):
            try:
                end(raylet_of(temp).children(recursive=True))  # its workers, then the rest
            except AssertionError:
                pass
            stop_processes_under(temp)
        try:
            shutil.copytree(Path(head_tmp) / "session_latest" / "logs", logs, symlinks=True)
        except (OSError, shutil.Error):
            pass  # only read below, to tell what Train did
        for temp in (node_tmp, head_tmp):
            shutil.rmtree(temp, ignore_errors=True)
    out = "".join(lines)
    # kept beside the head's logs, to read after a failure
    (tmp_path / "sweep-output.txt").write_text(f"{watch.killed} at {watch.kill_at}\n{out}")
    assert "up to 2 at once" in out, out[-3000:]  # both nodes were in the cluster
    assert proc.returncode == 0, out[-5000:]
    killed = watch.killed
    assert killed is not None, out[-3000:]  # the second node held a Train worker mid-run
    trial_id, run = killed["trial_id"], f"train-{killed['trial_id']}"
    assert not node_raylet.is_running() and killed["worker"] in killed["pids"]

    # Train's controller saw the worker of the lost node fail and started a new one, on the
    # head (its FailureConfig(max_failures=1)); the trial itself was not restarted: its actor
    # and the controller stay on cmkd_driver nodes
    said = controller_log(logs, run)
    retries = [m for m in said if m.startswith("[FailurePolicy] RETRY") and node_id in m]
    assert len(retries) == 1, said
    assert any(w == "head" and r == run and pid != killed["worker"] for w, pid, r in watch.seen)
    (name,) = {m.group(1) for m in EPOCH.finditer(out) if m.group(1).endswith(trial_id)}
    assert out.count(f"start {name}:") == 1, out[-3000:]

    # ... from its last checkpoint: every epoch reported once, none trained from scratch again
    assert killed["epoch"] >= 1
    assert [int(m.group(2)) for m in EPOCH.finditer(out) if m.group(1) == name] == list(
        range(1, EPOCHS + 1)
    ), out[-3000:]
    assert f"{name} finished after {EPOCHS} epoch(s)" in out

    # the sweep lost nothing: both trials finished their schedule, without error
    trials = json.loads((storage / "lost" / "results.json").read_text())["trials"]
    assert len(trials) == 2 and {t["trial_id"] for t in trials} >= {trial_id}
    for t in trials:
        assert t["error"] is None and t["epochs_run"] == EPOCHS and len(t["curve"]) == EPOCHS
    assert len(DONE.findall(out)) == 2
