"""The distillability diagnostic: its maths on constructed features, and the command on tiny
synth benchmarks where distillation can help (`synth`) and where it cannot (`synth-nohelp`)."""

import json

import pytest
import torch

from cmkd import diagnose as dg
from cmkd.data.synth import build_synth
from cmkd.models import linear_head


def test_procrustes_recovers_a_rotation_and_scale():
    g = torch.Generator().manual_seed(0)
    m_t = torch.randn(10, 16, generator=g)
    rot, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    m_s = 0.5 * m_t @ rot.T + 3.0  # the teacher's means seen in another frame, half the scale
    sim = dg.procrustes(m_s, m_t)
    assert sim.scale == pytest.approx(2.0, rel=1e-4)
    assert torch.allclose(sim(m_s), m_t, atol=1e-4)


def test_class_means_skip_nothing_and_fill_absent_classes():
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    m = dg.class_means(z, torch.tensor([0, 0, 2]), 4)
    assert torch.equal(m, torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))


def _clouds(shared: bool, seed: int = 0):
    """Teacher features of 10 classes, and student features in a rotated frame whose class
    structure is the teacher's (shared) or an unrelated one."""
    g = torch.Generator().manual_seed(seed)
    c, d, n = 10, 3, 40  # more classes than dims: a rotation cannot match any two geometries
    mu_t = 3 * torch.randn(c, d, generator=g)
    mu_s = mu_t if shared else 3 * torch.randn(c, d, generator=g)
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    y_t, y_s = torch.arange(c).repeat(n), torch.arange(c).repeat(n)
    z_t = mu_t[y_t] + 0.3 * torch.randn(c * n, d, generator=g)
    z_s = (mu_s[y_s] + 0.3 * torch.randn(c * n, d, generator=g)) @ rot
    head = linear_head(d, c)
    with torch.no_grad():  # nearest teacher class mean
        head.weight.copy_(mu_t)
        head.bias.copy_(-0.5 * (mu_t**2).sum(1))
    return z_s, y_s, z_t, y_t, head, c


@pytest.mark.parametrize("shared", [True, False])
def test_alignment_separates_a_shared_class_structure_from_an_unrelated_one(shared):
    z_s, y_s, z_t, y_t, head, c = _clouds(shared)
    logits_s = torch.zeros(len(y_s), c)
    true = dg.alignment(z_s[:100], y_s[:100], z_s, y_s, logits_s, z_t, y_t, head, c)
    perm = torch.roll(torch.arange(c), 1)
    shuffled = dg.alignment(
        z_s[:100], y_s[:100], z_s, y_s, logits_s, z_t, perm[y_t], head, c, perm=perm
    )
    if shared:  # the rotation is undone: aligned, and the teacher head reads the student
        assert true["la_acc"] > 0.95 and true["fa_sinkhorn"] < 0.05
        assert shuffled["fa_sinkhorn"] > 0.2 and shuffled["la_acc"] < 0.6
    else:  # no rotation aligns an unrelated class geometry
        assert true["la_acc"] < 0.6 and true["fa_sinkhorn"] > 0.2


@pytest.fixture(scope="module")
def benches(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    sizes = {"train_per_class": 40, "val_per_class": 30, "test_per_class": 5}
    for regime in ("synth", "synth-nohelp"):
        build_synth(root / regime, regime, seed=0, **sizes)
    return root


def test_command_ranks_the_regimes_and_gives_verdicts(benches, tmp_path, capsys):
    out = {}
    for regime in ("synth", "synth-nohelp"):
        js = tmp_path / f"{regime}.json"
        argv = [
            "--benchmark", str(benches / regime), "--warmup-epochs", "5",
            "--steps-per-epoch", "10", "--permutations", "12", "--json", str(js),
        ]  # fmt: skip
        assert dg.main(argv) == 0
        printed = capsys.readouterr().out
        assert "verdict: distillation" in printed and "| FA: class-cond. Sinkhorn" in printed
        out[regime] = json.loads(js.read_text())
    helps, nohelp = out["synth"], out["synth-nohelp"]
    assert helps["score"] > nohelp["score"] + 1, (helps["score"], nohelp["score"])
    # on this tiny data the verdicts may be 'unclear'; they must never be the wrong one
    assert helps["verdict"] != "unlikely to help", helps["reasons"]
    assert nohelp["verdict"] != "likely to help", nohelp["reasons"]
    for d in out.values():  # the references are on a sensible scale
        assert d["true"]["fa_sinkhorn"] < d["teacher_between_class"]
        assert 0 <= d["true"]["la_acc"] <= 1 and d["true"]["la_kl"] >= 0
        # synth has a pool: the warm-up learnt it, and the CE-only warm-up is beside it
        assert d["warmup"] == "ssl" and d["pool_rows"] == 10 * 40
        assert 0 <= d["true"]["pool_agree"] <= 1 and 0 <= d["ce_val_acc"] <= 1
        assert "pool_agree" in d["z"]
    assert "| pool: h_t agrees with h_s" in printed and "the pool alone" in printed


def test_permuted_teacher_and_no_pool(benches, tmp_path, capsys):
    """A permuted-label teacher is one wrong correspondence: never 'likely to help', and worse
    aligned than the real teacher; --unlabelled 0 warms up on the labels alone."""
    out = {}
    for name, extra in {
        "real": [], "permuted": ["--control", "permuted"], "nopool": ["--unlabelled", "0"]
    }.items():  # fmt: skip
        js = tmp_path / f"{name}.json"
        argv = [
            "--benchmark", str(benches / "synth"), "--warmup-epochs", "5",
            "--steps-per-epoch", "10", "--permutations", "12", "--json", str(js), *extra,
        ]  # fmt: skip
        assert dg.main(argv) == 0
        out[name] = json.loads(js.read_text())
    capsys.readouterr()
    real, permuted, nopool = out["real"], out["permuted"], out["nopool"]
    assert permuted["verdict"] != "likely to help", permuted["reasons"]
    # the class-conditional divergence is larger under the wrong correspondence, and the
    # teacher's reading of the pool no longer beats shuffled ones as the real teacher's does
    assert permuted["true"]["fa_sinkhorn"] > real["true"]["fa_sinkhorn"]
    assert permuted["z"]["pool_agree"] < real["z"]["pool_agree"]
    assert permuted["score"] < real["score"] - 2
    assert nopool["warmup"] == "ce" and nopool["pool_rows"] == 0
    assert "pool_agree" not in nopool["true"] and nopool["ce_val_acc"] is None


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    assert dg.main(["--benchmark", str(tmp_path / "nope")]) == 2
    assert "not a built-in" in capsys.readouterr().err
    assert dg.main(["--labels-per-class", "five"]) == 2
    assert "--labels-per-class" in capsys.readouterr().err
    assert dg.main(["--unlabelled", "some"]) == 2
    assert "--unlabelled" in capsys.readouterr().err
    assert dg.main(["--control", "shuffled"]) == 2
    assert "--control" in capsys.readouterr().err
