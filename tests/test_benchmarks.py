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
