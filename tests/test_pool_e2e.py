"""A sweep with an unlabelled pool, end to end on a real local Ray cluster: its references
include the teacher-free controls ssl_only and ssl_prior, the teacher-reading candidate is
retrained with a permuted-label and a neutral teacher, and the attribution of the gain is
written and said."""

import json
import os
import subprocess
import sys

import pytest

from cmkd.data.synth import build_synth

pytestmark = pytest.mark.ray

SPACE = """\
description: ce vs ssl vs ucmkd_pool, tiny
finalists: 2
fixed: {epochs: 3, steps_per_epoch: 6, batch_size: 16, pool_batch: 32, lr: 3.0e-3,
        augment: weak, readout: best, fa: mmd, la: teacher_ce}
params:
  algorithm: {choice: [ce, ssl, ucmkd_pool]}
  w_uot: {loguniform: [0.1, 1.0], when: {algorithm: ucmkd_pool}}
start:
  - {algorithm: ucmkd_pool, w_uot: 0.5}
"""


def test_a_pool_sweep_runs_the_teacher_free_references_and_the_controls(tmp_path):
    bench = tmp_path / "synth"
    build_synth(
        bench,
        "synth",
        seed=0,
        train_per_class=40,
        val_per_class=10,
        test_per_class=20,
        pool_per_class=40,
    )
    space = tmp_path / "pool-tiny.yaml"
    space.write_text(SPACE)
    cmd = [
        *(sys.executable, "-m", "cmkd.tune", "--space", str(space), "--benchmark", str(bench)),
        *("--storage", str(tmp_path / "runs"), "--name", "p", "--wandb", "disabled"),
        *("--labels-per-class", "3", "--val-per-class", "10", "--num-samples", "1"),
        *("--unlabelled", "300", "--final-seeds", "2", "--controls"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "WANDB_"))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    out = proc.stdout
    # synth's bank is balanced: the bank prior is the uniform one, so ssl_prior is not searched
    assert "1 searched + 3 reference trials" in out and "unlabelled pool: 300 b rows" in out
    assert "ssl_prior is ssl_only" in out
    results = json.loads((tmp_path / "runs" / "p" / "results.json").read_text())
    roles = {t["role"] for t in results["trials"]}
    assert {"reference-ce", "reference-ucmkd", "reference-ssl_only"} <= roles
    assert "reference-ssl_prior" not in roles
    final = results["final"]
    assert final["reference-ssl_only"]["config"]["algorithm"] == "ssl"
    # ... and in the final retrain it stands beside ssl_only, trained once
    assert final["reference-ssl_prior"]["runs"] == final["reference-ssl_only"]["runs"]
    assert any("same_run_as" in final[f"reference-ssl_{k}"] for k in ("only", "prior"))
    att = results["attribution"]
    teacher = att["teacher"]
    assert teacher is not None and final[teacher]["config"]["algorithm"] not in ("ce", "ssl")
    for control in ("permuted", "neutral"):
        entry = final[f"control-{control}"]
        assert entry["config"]["teacher"] == control and len(entry["runs"]) == 2
        assert {k: v for k, v in entry["config"].items() if k != "teacher"} == {
            k: v for k, v in final[teacher]["config"].items() if k != "teacher"
        }
    assert {"pool", "prior", "features", "teacher", "control-permuted"} <= set(att["parts"])
    assert att["parts"]["prior"]["val"]["mean"] == 0.0  # the same run
    # balanced accuracy beside accuracy, everywhere
    assert all("test_bacc" in r for e in final.values() for r in e["runs"])
    assert "test balanced acc" in out
    assert out.strip().splitlines()[-1].startswith("Attribution (paired over seeds; teacher")
