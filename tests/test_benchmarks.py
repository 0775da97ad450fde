"""The benchmarks' own helpers: FLOP counts, process grouping, the GPU script without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks import gpu, quality, throughput
from benchmarks.bank import forward_flops


def test_forward_flops_of_a_linear_layer_is_two_per_multiply_add():
    layer = nn.Linear(3, 5)
    assert forward_flops(layer, (3,)) == 2 * 3 * 5
    assert layer.training  # the mode is restored


def test_memory_breakdown_sums_per_kind_largest_first():
    snap = [
        ("ray::RayTrainWorker", 300, 500),
        ("raylet", 50, 80),
        ("ray::RayTrainWorker", 200, 400),
    ]
    rows = throughput.breakdown(snap)
    assert rows[0] == ("ray::RayTrainWorker", 2, 500, 900)
    assert rows[1] == ("raylet", 1, 50, 80)


def test_gpu_script_without_a_gpu_says_so_and_keeps_measured_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.md"
    assert gpu.main(["--out", str(out)]) == 0
    assert "Not measured" in out.read_text()
    assert "no NVIDIA GPU" in capsys.readouterr().out
    out.write_text(f"# results\n\n{gpu.MEASURED}\n| step | 1.0 |\n")
    assert gpu.main(["--out", str(out)]) == 0
    assert gpu.MEASURED in out.read_text()  # measurements from a GPU are not overwritten


def _regime(**acc):
    """One regime's rows, each a list of per-seed runs (seeds 1, 2, 3): value or (v1, v2, v3)."""
    names = {"ce": "CE (augmented)", "ssl": "ssl_only", "sslp": "ssl_prior",
             "rec": "recommendation", "full": "full-label (augmented)"}  # fmt: skip
    rows = {}
    for k, v in acc.items():
        vals = v if isinstance(v, tuple) else (v, v, v)
        rows[names[k]] = [
            {"seed": s, "test_acc": x / 100, "test_bacc": x / 100}
            for s, x in zip((1, 2, 3), vals, strict=True)
        ]
    return {"rows": rows}


def test_quality_targets_say_met_or_missed_and_by_how_much():
    cache = {
        # +6 over CE, but half the 40-point gap is 20: missed by 14
        "sonified 5": _regime(ce=50, ssl=55, sslp=55, rec=56, full=90),
        "sonified-lt 5": _regime(ce=40, ssl=50, sslp=54, rec=(52, 53, 54), full=80),
        "synth-nohelp 5": _regime(ce=60, ssl=59, sslp=59, rec=59, full=90),
    }
    text = "\n".join(quality.targets(cache))
    assert "the target (≥ +5 and ≥ half the gap) is 70.0: **MISSED by 14.0 points**" in text
    assert text.startswith("- sonified 5 (labels per class")
    # teacher's part: sonified-lt 53 − 50 = +3.0 (met); features 53 − 54 = −1.0 (below −0.5)
    assert "best +3.0 (sonified-lt 5): **met**" in text
    assert "**MISSED** in sonified-lt 5 (-1.0)" in text and "best +1.0 (sonified 5)" in text
    assert "synth-nohelp 5: recommendation − CE = -1.0 points (≥ −0.5): **MISSED by 0.5" in text
    cache["sonified 5"] = _regime(ce=50, ssl=70, sslp=70, rec=71, full=90)
    assert "is 70.0: **met**" in "\n".join(quality.targets(cache))
    d = quality.diff(cache["sonified-lt 5"]["rows"], "recommendation", "ssl_only", "test_bacc")
    assert d["mean"] == pytest.approx(3.0) and d["std"] == pytest.approx(1.0) and d["n"] == 3


def test_publish_writes_the_table_in_a_new_folder_and_names_every_file(tmp_path, capsys):
    from benchmarks.publish import publish

    out = tmp_path / "new" / "t.md"
    text = publish(["# t", "", "| a |", "|---|"], out, tmp_path / "new" / "t.png")
    assert out.read_text() == text == "# t\n\n| a |\n|---|\n"
    assert f"written to {out} and {tmp_path / 'new' / 't.png'}" in capsys.readouterr().out


def test_plain_loop_trains_the_epochs_in_a_fresh_process_and_stamps_them(tmp_path):
    """The overhead baseline runs the trial's training on its own: one stamp per epoch, in order
    (start, imports, data, epochs), from a process of its own."""
    import json
    import subprocess
    import sys

    from cmkd.config import DataConfig, DistillConfig
    from cmkd.data.synth import build_synth

    build_synth(tmp_path / "synth", "synth", seed=0, train_per_class=20, val_per_class=5,
                test_per_class=5)  # fmt: skip
    spec = {
        "distill": DistillConfig(epochs=2, steps_per_epoch=3, batch_size=16).model_dump(),
        "data": DataConfig(benchmark=str(tmp_path / "synth"), val_per_class=2).model_dump(),
    }
    (tmp_path / "run.json").write_text(json.dumps(spec))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.plain_loop", "--config", str(tmp_path / "run.json")],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    stamps = json.loads(out.strip().splitlines()[-1])
    assert len(stamps["epochs"]) == 2
    times = [stamps["started"], stamps["imported"], stamps["loaded"], *stamps["epochs"]]
    assert times == sorted(times)


def test_overhead_report_says_each_one_worker_ratio_met_or_missed_by_how_much():
    from types import SimpleNamespace

    from benchmarks import overhead

    def runs(*walls):
        return [{"wall": w, "start-up": 1.0, "training": w - 1.0} for w in walls]

    data = SimpleNamespace(
        meta=SimpleNamespace(name="sonified"), teacher="image", student="audio",
        y_train=[0] * 50, y_val=[0] * 250, x_pool=None,
    )  # fmt: skip
    args = SimpleNamespace(epochs=[10, 2], workers=[1, 2], trials=3, repeats=2)
    distill = {"algorithm": "ucmkd_pool", "steps_per_epoch": 40, "batch_size": 32, "pool_batch": 48}
    cases = [
        (1, 10, runs(20, 20), runs(22, 19, 19)),  # first 1.10, reused 0.95
        (1, 2, runs(8, 8), runs(12, 6, 6)),  # first 1.50: missed by 0.25
        (2, 10, runs(30, 30), runs(60, 60, 60)),  # two workers: stated, not judged
    ]
    text = "\n".join(overhead.report(cases, distill, data, 0.5, args))
    assert "- 10 epochs, first (starts its process): 1.10, met." in text
    assert "- 10 epochs, reused process: 0.95, met." in text
    assert "- 2 epochs, first (starts its process): 1.50, NOT met, by 0.25." in text
    assert "| 2 | 10 | every trial (Ray Train) | 30.0 | 60.0 | 2.00 |" in text


def test_throughput_counts_the_trials_whose_configuration_both_runs_trained():
    a = {"trials": [{"config": {"algorithm": "ce"}}, {"config": {"algorithm": "ssl"}}]}
    b = {"trials": [{"config": {"algorithm": "ce", "role": "reference"}}]}
    assert throughput.same_configs(a, b) == 1  # keys outside DistillConfig do not count
    assert throughput.same_configs(b, a) == 1
