"""Training steps: what each algorithm's gradient reaches, the frozen teacher, the look-ahead."""

import copy

import pytest
import torch
import torch.nn.functional as F

from cmkd import losses, methods
from cmkd.models import build_student, freeze, linear_head

D, C, IN = 6, 4, 10


def make(seed=0, feature_dim=D, teacher_dim=None):
    torch.manual_seed(seed)
    student = build_student(
        "mlp", (IN,), C, feature_dim=feature_dim, teacher_dim=teacher_dim, hidden=16
    )
    h_t = freeze(linear_head(D, C))
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.arange(16) % C
    batch = methods.Batch(
        x_s=torch.randn(16, IN, generator=g),
        y_s=y,
        z_t=torch.randn(16, D, generator=g),
        y_t=y.clone(),
        logits_t=torch.randn(16, C, generator=g),
        pool=methods.PoolBatch(  # read only by the pool algorithms
            x_weak=torch.randn(12, IN, generator=g),
            x_strong=torch.randn(12, IN, generator=g),
            z_b=torch.randn(12, D, generator=g),
            y_b=torch.arange(12) % C,
            b=torch.full((12,), 1 / 12),
            prior=torch.full((C,), 1 / C),
        ),
    )
    return student, h_t, batch


HYPER = {
    "fa": methods.make_fa("sinkhorn", epsilon=0.1),
    "la": methods.make_la("teacher_ce"),
    "w_fa": 1.0,
    "w_la": 1.0,
    "grad_clip": None,
    "inner_lr": 1e-2,
    "n1": 1,
    "n2": 1,
}


def sgd_delta(algorithm, **overrides):
    """Parameter change of one SGD(lr=0.1) step, by parameter name."""
    student, h_t, batch = make()
    before = {k: v.detach().clone() for k, v in student.named_parameters()}
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    methods.make_step(algorithm, **{**HYPER, **overrides})(student, h_t, opt, batch)
    return {k: v.detach() - before[k] for k, v in student.named_parameters()}


def encoder_keys(delta):
    return [k for k in delta if k.startswith("encoder")]


@pytest.mark.parametrize("algorithm", sorted(methods.ALGORITHMS))
def test_teacher_head_never_changes_and_gets_no_gradient(algorithm):
    student, h_t, batch = make()
    frozen = copy.deepcopy(h_t.state_dict())
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    step = methods.make_step(algorithm, **HYPER)
    for _ in range(3):
        out = step(student, h_t, opt, batch)
    assert all(torch.equal(frozen[k], v) for k, v in h_t.state_dict().items())
    assert all(p.grad is None for p in h_t.parameters())
    assert "loss" in out and all(isinstance(v, float) for v in out.values())


def test_ce_equals_plain_cross_entropy_training_step_for_step():
    student, h_t, batch = make()
    plain = copy.deepcopy(student)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    step = methods.make_step("ce", **HYPER)  # extra hyperparameters are ignored by ce
    for _ in range(5):
        out = step(student, h_t, opt, batch)
        opt_plain.zero_grad()
        loss = F.cross_entropy(plain(batch.x_s), batch.y_s)
        loss.backward()
        opt_plain.step()
        assert out["ce"] == loss.item()
    for p, q in zip(student.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)


def test_feature_alignment_reaches_the_encoder_but_not_the_student_head():
    ce, fa = sgd_delta("ce"), sgd_delta("fa_only", w_fa=5.0)
    assert torch.equal(ce["head.weight"], fa["head.weight"])
    assert all(not torch.allclose(ce[k], fa[k]) for k in encoder_keys(ce) if "weight" in k)


def test_teacher_head_ce_sends_gradient_into_the_encoder_not_the_student_head():
    ce = sgd_delta("ce")
    la_only = sgd_delta("ucmkd_sum", w_fa=0.0, w_la=1.0)
    assert torch.equal(ce["head.weight"], la_only["head.weight"])
    assert all(not torch.allclose(ce[k], la_only[k]) for k in encoder_keys(ce) if "weight" in k)
    # and exactly by the teacher-head CE gradient
    student, h_t, batch = make()
    F.cross_entropy(h_t(student.features(batch.x_s)), batch.y_s).backward()
    w = "encoder.4.weight"
    expected = ce[w] - 0.1 * dict(student.named_parameters())[w].grad
    assert torch.allclose(la_only[w], expected, atol=1e-6)


def test_kl_label_alignment_reaches_the_student_head():
    ce = sgd_delta("ce")
    kl = sgd_delta("ucmkd_sum", w_fa=0.0, la=methods.make_la("kl", temperature=2.0))
    assert not torch.allclose(ce["head.weight"], kl["head.weight"])


def test_bilevel_applies_the_ce_gradient_taken_at_the_look_ahead_point():
    student, h_t, batch = make()
    fa, la = HYPER["fa"], HYPER["la"]
    # independent look-ahead: one FA step then one LA step (encoder and head), AdamW(1e-2, 0.05)
    look = copy.deepcopy(student)
    inner = torch.optim.AdamW(look.parameters(), lr=1e-2, weight_decay=0.05)
    inner.zero_grad()
    fa(look.features(batch.x_s), batch.z_t, batch.y_s, batch.y_t).backward()
    inner.step()
    enc_before_la = look.encoder[1].weight.detach().clone()
    inner.zero_grad()
    z = look.features(batch.x_s)
    la(look.head(z), h_t(z), batch.y_s).backward()
    inner.step()
    # the defect to avoid: LA must move the encoder (teacher-head part carries gradient)
    assert not torch.allclose(look.encoder[1].weight, enc_before_la)
    grads = torch.autograd.grad(
        F.cross_entropy(look(batch.x_s), batch.y_s), list(look.parameters())
    )
    expected = [p.detach() - 0.1 * g for p, g in zip(student.parameters(), grads, strict=True)]

    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    out = methods.make_step("ucmkd_bilevel", **HYPER)(student, h_t, opt, batch)
    for p, e in zip(student.parameters(), expected, strict=True):
        assert torch.allclose(p, e, atol=1e-6)
    # BatchNorm statistics come back from the copy although the real student ran no forward pass
    for b_real, b_look in zip(student.buffers(), look.buffers(), strict=True):
        assert torch.equal(b_real, b_look)
    assert student.encoder[2].running_mean.abs().sum() > 0
    assert set(out) == {"loss", "ce", "fa", "la"}


def test_bilevel_differs_from_a_plain_ce_step():
    assert not torch.allclose(
        sgd_delta("ce")["head.weight"], sgd_delta("ucmkd_bilevel")["head.weight"]
    )


def test_kd_unpaired_moves_toward_teacher_logits():
    student, h_t, batch = make()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    step = methods.make_step("kd_unpaired", kd_temperature=4.0, kd_alpha=1.0)
    first = [step(student, h_t, opt, batch)["kd"] for _ in range(30)]
    assert first[-1] < 0.5 * first[0]


def test_kd_unpaired_refuses_unmatched_classes():
    student, h_t, batch = make()
    bad = methods.Batch(batch.x_s, batch.y_s, batch.z_t, batch.y_t.roll(1), batch.logits_t)
    with pytest.raises(ValueError, match="class-matched"):
        methods.make_step("kd_unpaired")(
            student, h_t, torch.optim.SGD(student.parameters(), 0.1), bad
        )


@pytest.mark.parametrize("algorithm", ["ucmkd_sum", "ucmkd_bilevel"])
def test_label_alignment_with_mismatched_feature_size_raises_instead_of_falling_back(algorithm):
    student, h_t, batch = make(feature_dim=5)  # no projection: 5 != teacher's 6
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    hyper = {**HYPER, "fa": methods.make_fa("mmd"), "w_fa": 0.0}
    with pytest.raises(ValueError, match="takes 6 features, but the student gives 5"):
        methods.make_step(algorithm, **hyper)(student, h_t, opt, batch)


def test_projection_makes_mismatched_sizes_work():
    student, h_t, batch = make(feature_dim=5, teacher_dim=D)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    out = methods.make_step("ucmkd_sum", **HYPER)(student, h_t, opt, batch)
    assert out["la"] > 0


def test_nan_teacher_features_name_the_term():
    student, h_t, batch = make()
    z_t = batch.z_t.clone()
    z_t[0, 0] = float("nan")
    bad = methods.Batch(batch.x_s, batch.y_s, z_t, batch.y_t, batch.logits_t)
    with pytest.raises(losses.NonFiniteError, match="fa_sinkhorn: input 'z_t'"):
        methods.make_step("ucmkd_sum", **HYPER)(
            student, h_t, torch.optim.SGD(student.parameters(), 0.1), bad
        )


def test_evaluate_reads_out_through_both_heads():
    student, h_t, batch = make()
    out = methods.evaluate(student, h_t, batch.x_s, batch.y_s, batch_size=5)
    with torch.no_grad():
        student.eval()
        z = student.features(batch.x_s)
        acc_s = (student.head(z).argmax(1) == batch.y_s).float().mean().item()
        acc_t = (h_t(z).argmax(1) == batch.y_s).float().mean().item()
    assert out["acc"] == pytest.approx(acc_s) and out["acc_teacher_head"] == pytest.approx(acc_t)
    student.train()
    student.head.load_state_dict(h_t.state_dict())  # same head: both read-outs agree
    out = methods.evaluate(student, h_t, batch.x_s, batch.y_s)
    assert out["acc"] == out["acc_teacher_head"]
    assert student.training  # evaluate restores the mode


def test_unknown_algorithm_and_terms_are_named():
    with pytest.raises(ValueError, match="unknown algorithm 'sumo'"):
        methods.make_step("sumo")
    with pytest.raises(ValueError, match="unknown feature alignment 'wass'"):
        methods.make_fa("wass")
    with pytest.raises(ValueError, match="unknown label alignment 'kappa'"):
        methods.make_la("kappa")
