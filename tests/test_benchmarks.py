"""The benchmarks' own helpers: FLOP counts, process grouping, the GPU script without a GPU."""

from __future__ import annotations

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
    names = {"ce": "CE only", "kd": "unpaired KD", "sum": "reference UCMKD sum",
             "bilevel": "reference UCMKD bilevel", "win": quality.WINNER, "full": quality.FULL}  # fmt: skip
    return {"rows": {names[k]: [{"test_acc": v / 100}] for k, v in acc.items()}}


def test_quality_targets_say_met_or_missed_and_by_how_much():
    cache = {
        "avdigits audio<-image 5": _regime(ce=20, kd=21, sum=19, bilevel=22, win=30, full=50),
        "synth-nohelp 5": _regime(ce=60, kd=59, sum=58, bilevel=61, win=59.5, full=90),
    }
    text = "\n".join(quality.targets(cache))
    # half of the 30-point gap above 20 is 35: the winner at 30 misses it by 5, share 10/30
    assert "half the gap is 35.0: **MISSED by 5.0 points** (share +0.33)" in text
    # beats the references on avdigits (30 vs 22) but not on synth-nohelp (59.5 vs 61)
    assert "in 1 of 2 regimes" in text and "**synth-nohelp 5 (-1.5)**" in text
    assert "winner − CE = -0.5 points: **MISSED by 0.5 points**" in text
    cache["avdigits audio<-image 5"] = _regime(ce=20, kd=21, sum=19, bilevel=22, win=36, full=50)
    assert "**met** (share +0.53)" in "\n".join(quality.targets(cache))
    assert quality.share(25.0, 30.0, 30.0) == "n/a (gap +0.0)"
    assert quality.share(25.0, 30.0, 31.5) == "n/a (gap +1.5)"  # inside the seeds' noise


def test_publish_writes_the_table_in_a_new_folder_and_names_every_file(tmp_path, capsys):
    from benchmarks.publish import publish

    out = tmp_path / "new" / "t.md"
    text = publish(["# t", "", "| a |", "|---|"], out, tmp_path / "new" / "t.png")
    assert out.read_text() == text == "# t\n\n| a |\n|---|\n"
    assert f"written to {out} and {tmp_path / 'new' / 't.png'}" in capsys.readouterr().out
