"""cluster/submit.py against a real Ray job server: submit, watch, stop mid-way, re-submit.

A head node is started here with ``ray start --head`` on 127.0.0.1 (free ports, its own short
temp dir, token authentication on) and stopped at the end, by its own processes only. The sweep
is the smoke space on a small synth benchmark built here.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from cmkd.data.synth import build_synth
from cmkd.space import SPACES_DIR

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parent.parent
SUBMIT = [sys.executable, str(REPO / "cluster" / "submit.py")]
DONE = re.compile(
    r"\[\s*\d+s \d+/\d+ done\] (\S+) (?:finished|stopped by ASHA) after \d+ epoch\(s\), "
    r"best val_acc ([0-9.]+)"
)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def stop_processes_under(temp_dir: str) -> None:
    """End the Ray processes of this test's node (they all name its temp dir), nobody else's."""
    mine = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or []):
                mine.append(p)
        except (psutil.Error, TypeError):
            continue
    for p in mine:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(mine, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


@pytest.fixture(scope="module")
def head():
    """A one-node cluster with a job server; yields its dashboard address and environment."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    gcs, dash, client, agent, metrics = free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        # the job runs `python`: this environment's, as a cluster image's would be
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    ray = str(Path(sys.executable).parent / "ray")
    start = [
        ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
        "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
        "--metrics-export-port", str(metrics), "--num-cpus", "2", "--temp-dir", temp,
        "--resources", '{"cmkd_driver": 2}', "--disable-usage-stats",
    ]  # fmt: skip
    log = open(Path(temp) / "ray-start.log", "w")
    proc = subprocess.Popen(start, env=env, stdout=log, stderr=subprocess.STDOUT)
    # The job client gets the address, and the token but not RAY_AUTH_MODE: submit.py must
    # turn token authentication on by itself, as `ray start` did.
    env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    env["RAY_ADDRESS"] = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while True:  # the job server answers once the dashboard is up
            probe = subprocess.run(
                [*SUBMIT, "status", "nothing"], env=env, capture_output=True, text=True
            )
            if "no job of sweep" in probe.stderr:
                break
            assert proc.poll() is None, (Path(temp) / "ray-start.log").read_text()
            assert time.time() < deadline, probe.stderr[-2000:]
            time.sleep(2)
        yield {"address": env["RAY_ADDRESS"], "env": env, "temp": temp}
    finally:
        proc.send_signal(signal.SIGINT)  # `ray start --block` stops what it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        stop_processes_under(temp)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "synth"
    build_synth(out, "synth", seed=0, train_per_class=30, val_per_class=20, test_per_class=20)
    return out


def submit(head, *args, timeout=600):
    proc = subprocess.run(
        [*SUBMIT, *args], env=head["env"], capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, proc.stdout + proc.stderr


def job_log(head, job_id: str) -> str:
    """The driver's log as the job server keeps it (read from disk: cheaper than a client)."""
    path = Path(head["temp"]) / "session_latest" / "logs" / f"job-driver-{job_id}.log"
    return path.read_text() if path.exists() else ""


# the smoke space with epochs long enough (a few seconds a trial) for the job to be stopped
# before the sweep ends
SPACE = (
    (SPACES_DIR / "smoke.yaml").read_text().replace("steps_per_epoch: 3", "steps_per_epoch: 400")
)


def test_submit_stop_and_resubmit_a_sweep_through_the_job_server(head, bench, tmp_path):
    space = tmp_path / "slow-smoke.yaml"
    space.write_text(SPACE)
    tune_args = [
        "--space", str(space), "--benchmark", str(bench), "--storage", str(tmp_path),
        "--name", "job sweep", "--num-samples", "3", "--epochs", "4", "--final-seeds", "1",
        "--wandb", "disabled",
    ]  # fmt: skip
    # a name that is no folder or job id is refused before anything is submitted
    code, out = submit(head, "submit", "--no-wait", "--", *tune_args)
    assert code == 2 and "'job sweep': a sweep name is letters" in out
    tune_args[tune_args.index("job sweep")] = "jobs"

    code, out = submit(head, "submit", "--no-wait", "--driver-resource", "cmkd_driver", "--", *tune_args)  # fmt: skip
    assert code == 0 and "submitted sweep 'jobs' as job cmkd-jobs" in out, out
    assert "--name jobs --resume" in out  # the job's command, quoted for the shell

    # the same sweep again while it runs: refused, nothing submitted twice
    code, out = submit(head, "submit", "--no-wait", "--", *tune_args)
    assert code == 1 and "already" in out and "cmkd-jobs" in out, out

    # mid-way: once a trial has finished, stop the job
    done, deadline = {}, time.time() + 400
    while len(done) < 1:
        text = job_log(head, "cmkd-jobs")
        done = {m.group(1): float(m.group(2)) for m in DONE.finditer(text)}
        assert "Traceback" not in text, text[-3000:]
        assert time.time() < deadline, text[-3000:]
        time.sleep(2)
    code, out = submit(head, "stop", "jobs")
    assert code == 0 and "cmkd-jobs: STOPPED" in out, out
    code, out = submit(head, "logs", "jobs")
    assert "sweep interrupted" in out and not (tmp_path / "jobs" / "results.json").exists(), out
    finished_before = {m.group(1): float(m.group(2)) for m in DONE.finditer(out)}
    assert len(finished_before) >= 1

    # re-submitting the same command resumes the sweep as attempt 2
    code, out = submit(head, "submit", "--", *tune_args)
    assert code == 0, out[-4000:]
    assert "resuming sweep 'jobs' as job cmkd-jobs-2" in out
    # what the stopped attempt may still hold is freed first, by a small job on the cluster
    assert re.search(r"released \d+ placement group\(s\) left by the earlier attempts", out), out
    assert "resuming the sweep in" in out and "job cmkd-jobs-2: SUCCEEDED" in out
    for name in finished_before:  # finished trials are not started again
        assert f"start {name}:" not in out

    code, out = submit(head, "status", "jobs")
    assert code == 0
    assert re.search(r"cmkd-jobs\tSTOPPED", out) and re.search(r"cmkd-jobs-2\tSUCCEEDED", out)
    assert out.strip().endswith("sweep jobs: SUCCEEDED")

    results = json.loads((tmp_path / "jobs" / "results.json").read_text())
    trials = results["trials"]
    assert len(trials) == 5 and all(t["error"] is None for t in trials)
    by_name = {f"{t['role']}-{t['trial_id']}": t for t in trials}
    for name, best in finished_before.items():  # kept, with the same result
        assert by_name[name]["best_val_acc"] == pytest.approx(best, abs=5e-5)
    assert set(results["final"]) >= {"reference-ce", "reference-ucmkd"}
    assert set(results["final"]) == set(results["finalists"]) | {"reference-ce", "reference-ucmkd"}

    # a finished sweep is not run again, whether submitted or resumed
    for again in (["submit", "--no-wait", "--", *tune_args], ["resume", "--no-wait", "jobs"]):
        code, out = submit(head, *again)
        assert code == 0 and "already finished (job cmkd-jobs-2)" in out, out
    code, out = submit(head, "logs", "jobs")
    assert results["verdict"]["sentence"] in out
