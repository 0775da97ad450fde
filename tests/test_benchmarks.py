"""The benchmarks' own helpers: FLOP counts, process grouping, the GPU script without a GPU."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks import gpu, throughput
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
