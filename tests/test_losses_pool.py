"""The unlabelled-pool terms: unbalanced OT against POT in float64, OT pseudo-labels, FixMatch's
pseudo-label cross-entropy and class-prior matching against hand formulas."""

import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from cmkd import losses as L


def problem(n=17, m=23, seed=0):
    """A cost scaled to [0, 2] (½‖x−y‖² on the unit sphere) and non-uniform weights, n != m."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(m, 3)) + 0.3
    cost = 0.5 * ot.dist(x, y)
    cost = 2.0 * cost / cost.max()
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    return cost, a / a.sum(), b / b.sum()


def ours(cost, a, b, **kw):
    t = torch.tensor
    return L.unbalanced_sinkhorn_plan(t(cost), t(a), t(b), **kw).numpy()


def pot_plan(cost, a, b, eps, tau, iters=200_000, stop=1e-15):
    return ot.unbalanced.sinkhorn_unbalanced(
        a, b, cost, reg=eps, reg_m=tau, method="sinkhorn", numItermax=iters, stopThr=stop, log=True
    )


def pot_objective(plan, cost, a, b, eps, tau):
    """POT's log['total_cost'] formula (KL without the mass terms, as POT reports it)."""

    def kl(p, q):
        return np.sum(p * np.log(p / q + 1e-16))

    return (
        np.sum(plan * cost)
        + eps * kl(plan, np.outer(a, b))
        + tau * kl(plan.sum(1), a)
        + tau * kl(plan.sum(0), b)
    )


# (ε, τ) pairs POT's plain unbalanced Sinkhorn converges on (stopThr 1e-15) in under 3,000 steps.
CONVERGED = [(0.01, 0.1), (0.01, 1.0), (0.05, 1.0), (0.1, 10.0), (0.5, 100.0)]


@pytest.mark.parametrize("eps,tau", CONVERGED)
def test_plan_and_objective_match_pot_converged(eps, tau):
    cost, a, b = problem()
    ref, log = pot_plan(cost, a, b, eps, tau)
    plan = ours(cost, a, b, epsilon=eps, tau=tau, iters=3000)
    assert np.abs(plan - ref).max() <= 1e-9 * ref.max()
    got = pot_objective(plan, cost, a, b, eps, tau)
    assert got == pytest.approx(log["total_cost"], rel=1e-9)


@pytest.mark.parametrize("eps,tau", [(0.01, 100.0), (0.01, 0.1), (0.2, 3.0)])
def test_iterates_match_pot_step_for_step(eps, tau):
    """Same number of steps, no early stop: the log-domain iterates are POT's scaling iterates."""
    cost, a, b = problem(n=9, m=14, seed=1)
    ref, _ = pot_plan(cost, a, b, eps, tau, iters=300, stop=0.0)
    plan = ours(cost, a, b, epsilon=eps, tau=tau, iters=300)
    assert np.abs(plan - ref).max() <= 1e-10 * ref.max()


@pytest.mark.parametrize("eps,tau", [(0.05, 0.3), (0.1, 2.0)])
def test_plan_satisfies_the_generalised_kl_optimality_condition(eps, tau):
    """∂/∂P of <P,C> + ε·KL(P|a⊗b) + τ·KL(P1|a) + τ·KL(Pᵀ1|b), generalised KL, vanishes."""
    cost, a, b = problem(seed=2)
    plan = ours(cost, a, b, epsilon=eps, tau=tau, iters=1500)
    grad = (
        cost
        + eps * np.log(plan / np.outer(a, b))
        + tau * np.log(plan.sum(1) / a)[:, None]
        + tau * np.log(plan.sum(0) / b)[None, :]
    )
    assert np.abs(grad).max() < 1e-8
    # a wrong τ (or a plain-entropy regulariser) would leave a gradient
    other = ours(cost, a, b, epsilon=eps, tau=2 * tau, iters=1500)
    wrong = (
        cost
        + eps * np.log(other / np.outer(a, b))
        + tau * np.log(other.sum(1) / a)[:, None]
        + tau * np.log(other.sum(0) / b)[None, :]
    )
    assert np.abs(wrong).max() > 1e-3


def test_infinite_tau_is_balanced_sinkhorn_and_large_tau_approaches_it():
    cost, a, b = problem(seed=3)
    eps = 0.1
    ref = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", numItermax=20_000, stopThr=1e-14)
    exact = ours(cost, a, b, epsilon=eps, tau=math.inf, iters=1000)
    assert np.abs(exact - ref).max() <= 1e-9 * ref.max()
    near = ours(cost, a, b, epsilon=eps, tau=1e4, iters=1000)
    loose = ours(cost, a, b, epsilon=eps, tau=0.5, iters=1000)
    err_near, err_loose = np.abs(near - ref).max(), np.abs(loose - ref).max()
    assert err_near < 1e-3 * ref.max()
    assert err_loose > 100 * err_near
    assert np.abs(near.sum(0) - b).max() < 1e-3 * b.max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_epsilon_is_finite_and_float32_agrees(dtype):
    cost, a, b = problem(seed=4)
    t = torch.tensor
    ref = L.unbalanced_sinkhorn_plan(t(cost), t(a), t(b), epsilon=0.01, tau=1.0, iters=1000)
    plan = L.unbalanced_sinkhorn_plan(
        t(cost, dtype=dtype),
        t(a, dtype=dtype),
        t(b, dtype=dtype),
        epsilon=0.01,
        tau=1.0,
        iters=1000,
    )
    assert plan.dtype == dtype
    assert torch.isfinite(plan).all()
    assert torch.allclose(plan.double(), ref, atol=1e-4 * ref.max().item())


def test_zero_weight_rows_get_no_mass():
    cost, a, b = problem(seed=5)
    a[3], b[7] = 0.0, 0.0
    plan = ours(cost, a / a.sum(), b / b.sum(), epsilon=0.05, tau=1.0, iters=500)
    assert np.isfinite(plan).all()
    assert plan[3].sum() == 0.0 and plan[:, 7].sum() == 0.0


def clusters(centres, per, seed, spread=0.05):
    g = torch.Generator().manual_seed(seed)
    pts = [c + spread * torch.randn(per, 2, generator=g, dtype=torch.float64) for c in centres]
    labels = torch.arange(len(centres)).repeat_interleave(per)
    return torch.cat(pts), labels


CENTRES = torch.tensor([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]], dtype=torch.float64)


def test_relaxed_marginals_leave_a_bank_class_missing_from_the_pool_alone():
    """Pool: two clusters; bank: three. With small τ the third cluster receives little mass (no
    pool row is forced onto it); with large τ the marginal constraint pushes its mass through."""
    z_u, _ = clusters(CENTRES[:2], 20, seed=0)
    z_b, y_b = clusters(CENTRES, 15, seed=1)
    third = (y_b == 2).numpy()

    def received(tau):
        _, plan = L.unbalanced_ot(
            z_u, z_b, epsilon=0.05, tau=tau, iters=1000, normalize_mode="none"
        )
        return plan.numpy()[:, third].sum()

    b_third = third.mean()  # its share of the bank-side weight, 1/3
    assert received(0.1) < 0.05 * b_third
    assert received(100.0) > 0.8 * b_third


def test_unbalanced_ot_gradient_reaches_pool_features_through_the_cost_only():
    z_u = clusters(CENTRES[:2], 10, seed=2)[0].requires_grad_(True)
    z_b, _ = clusters(CENTRES, 8, seed=3)
    loss, plan = L.unbalanced_ot(z_u, z_b, epsilon=0.1, tau=1.0, normalize_mode="none")
    assert not plan.requires_grad
    (grad,) = torch.autograd.grad(loss, z_u)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the envelope gradient: Σ_j P_ij (x_i − y_j), the plan held fixed
    expected = plan.sum(1, keepdim=True) * z_u.detach() - plan @ z_b
    assert torch.allclose(grad, expected, atol=1e-12)
    assert loss.item() == pytest.approx((plan * 0.5 * torch.cdist(z_u, z_b) ** 2).sum().item())


def test_joint_cost_moves_the_plan_toward_label_consistent_matches():
    """Pool rows equidistant from two bank classes: features alone split their mass; the student
    head's prediction, through the joint cost, sends each row to the bank rows of its class."""
    g = torch.Generator().manual_seed(4)
    z_b, y_b = clusters(CENTRES[:2], 12, seed=5)
    z_u = 0.5 * (CENTRES[0] + CENTRES[1]) + 0.01 * torch.randn(
        16, 2, generator=g, dtype=torch.float64
    )
    y_u = torch.arange(16) % 2
    logits_u = 4.0 * F.one_hot(y_u, 2).double()
    same = (y_u[:, None] == y_b[None, :]).double()

    def consistent(joint):
        _, plan = L.unbalanced_ot(
            z_u,
            z_b,
            epsilon=0.05,
            tau=1.0,
            logits_u=logits_u,
            y_b=y_b,
            joint=joint,
            normalize_mode="none",
        )
        return ((plan * same).sum() / plan.sum()).item()

    assert consistent(0.0) == pytest.approx(0.5, abs=0.1)
    assert consistent(1.0) > 0.95


def test_bank_weights_are_normalised_and_change_the_plan():
    z_u, _ = clusters(CENTRES[:2], 10, seed=6)
    z_b, y_b = clusters(CENTRES[:2], 10, seed=7)
    w = torch.where(y_b == 0, 3.0, 1.0).double()
    _, p1 = L.unbalanced_ot(z_u, z_b, b=w, tau=10.0)
    _, p2 = L.unbalanced_ot(z_u, z_b, b=7.0 * w, tau=10.0)
    _, p0 = L.unbalanced_ot(z_u, z_b, tau=10.0)
    assert torch.allclose(p1, p2)
    assert p1[:, y_b == 0].sum() > p0[:, y_b == 0].sum() + 0.1


def test_unbalanced_ot_errors():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="size 3 but teacher features have size 5"):
        L.unbalanced_ot(z, torch.randn(6, 5))
    with pytest.raises(ValueError, match="needs logits_u and y_b"):
        L.unbalanced_ot(z, torch.randn(6, 3), joint=0.5)
    with pytest.raises(L.NonFiniteError, match="z_u"):
        L.unbalanced_ot(torch.full((4, 3), float("nan")), torch.randn(6, 3))


def test_plan_class_probs_on_a_separable_toy():
    z_u, y_u = clusters(CENTRES, 6, seed=8)
    z_b, y_b = clusters(CENTRES, 9, seed=9)
    _, plan = L.unbalanced_ot(z_u, z_b, epsilon=0.05, tau=1.0, normalize_mode="none")
    probs = L.plan_class_probs(plan, y_b, 3)
    assert probs.shape == (18, 3)
    assert torch.allclose(probs.sum(1), torch.ones(18, dtype=torch.float64))
    assert torch.equal(probs.argmax(1), y_u)
    assert probs.max(1).values.min() > 0.99
    # by hand on a tiny plan; a row without mass is uniform
    tiny = torch.tensor([[0.1, 0.3, 0.0], [0.0, 0.0, 0.0]])
    out = L.plan_class_probs(tiny, torch.tensor([1, 0, 1]), 2)
    assert torch.allclose(out, torch.tensor([[0.75, 0.25], [0.5, 0.5]]))


def test_confident_labels():
    probs = torch.tensor([[0.1, 0.9], [0.6, 0.4], [0.95, 0.05]])
    labels, mask = L.confident_labels(probs, 0.9)
    assert labels.dtype == torch.long and torch.equal(labels, torch.tensor([1, 0, 0]))
    assert torch.equal(mask, torch.tensor([True, False, True]))


def test_pseudo_label_ce_by_hand_and_zero_gradient_for_unconfident_rows():
    logits = torch.tensor(
        [[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [-1.0, 3.0, 0.0], [0.0, 1.0, 2.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    probs = torch.tensor(
        [[0.05, 0.05, 0.9], [0.3, 0.4, 0.3], [0.0, 0.97, 0.03], [0.5, 0.5, 0.0]],
        dtype=torch.float64,
    )
    loss = L.pseudo_label_ce(logits, probs, 0.9)
    log_p = torch.log_softmax(logits.detach(), 1)
    by_hand = -(log_p[0, 2] + log_p[2, 1]) / 4  # rows 0 and 2 confident, mean over all 4
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-12)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad[[1, 3]].abs().max() == 0
    assert grad[[0, 2]].abs().min() > 0


def test_pseudo_label_ce_is_zero_with_a_gradient_when_none_is_confident():
    logits = torch.randn(5, 4, requires_grad=True)
    loss = L.pseudo_label_ce(logits, torch.full((5, 4), 0.25), 0.5)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad.abs().max() == 0


def test_prior_match_zero_at_the_prior_positive_elsewhere():
    prior = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    at_prior = prior.log().expand(7, 3).clone()
    assert abs(L.prior_match(at_prior, prior).item()) < 1e-12
    # rows that differ but average to the prior also give 0
    mixed = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3]], dtype=torch.float64)
    assert abs(L.prior_match(mixed.log(), prior).item()) < 1e-12
    logits = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = torch.softmax(logits, 1).mean(0)
    by_hand = (prior * (prior / mean).log()).sum()
    value = L.prior_match(logits, prior)
    assert value.item() > 0
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-12)


def test_prior_match_gradient_on_a_collapsed_batch_pushes_toward_other_classes():
    logits = torch.zeros(8, 4, dtype=torch.float64)
    logits[:, 0] = 6.0  # every row predicts class 0
    logits.requires_grad_(True)
    prior = torch.full((4,), 0.25, dtype=torch.float64)
    (grad,) = torch.autograd.grad(L.prior_match(logits, prior), logits)
    assert (grad[:, 0] > 0).all() and (grad[:, 1:] < 0).all()  # descent lowers class 0
    stepped = logits.detach() - 1.0 * grad
    before = torch.softmax(logits.detach(), 1).mean(0)
    after = torch.softmax(stepped, 1).mean(0)
    assert (after[1:] > before[1:]).all()
    assert L.prior_match(stepped, prior) < L.prior_match(logits.detach(), prior)


def test_prior_match_ignores_classes_outside_the_prior_support_and_checks_shape():
    logits = torch.randn(5, 3, dtype=torch.float64)
    prior = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    mean = torch.softmax(logits, 1).mean(0)
    by_hand = 0.5 * (0.5 / mean[0]).log() + 0.5 * (0.5 / mean[1]).log()
    assert L.prior_match(logits, prior).item() == pytest.approx(by_hand.item(), rel=1e-12)
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        L.prior_match(logits, torch.full((4,), 0.25))
