"""Alignment losses for cross-modal distillation without paired data (UCMKD, ICML 2026).

The paper bounds the student's error by the teacher's error, a feature-alignment term (a
distance between the student's and the teacher's feature distributions) and a label-alignment
term (how the teacher head's and the student head's predictions on the student's own features
disagree). Every function here is pure: tensors in, scalar out, hyperparameters as keyword
arguments. Naming: ``z_s`` (N, D) student features, ``z_t`` (M, D) teacher features of
*unpaired* samples, ``y_s`` (N,), ``y_t`` (M,) their labels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from geomloss._legacy.sinkhorn_divergence import (
    epsilon_schedule,
    log_weights,
    max_diameter,
    sinkhorn_cost,
    sinkhorn_loop,
)
from geomloss._legacy.sinkhorn_samples import softmin_tensorized
from torch import Tensor


class NonFiniteError(FloatingPointError):
    """A loss term met NaN or inf; the message names the term and the tensor."""


def check_finite(term: str, **tensors: Tensor) -> None:
    """Raise :class:`NonFiniteError` naming ``term`` if any tensor holds NaN or inf."""
    for name, t in tensors.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(
                f"{term}: input '{name}' contains NaN or inf (shape {tuple(t.shape)}); "
                "lower the learning rate or the loss weight, or check the data"
            )


def normalize(z: Tensor, mode: str = "l2") -> Tensor:
    """Put features on a fixed scale before alignment (raw norms of ~28 collapse OT training).

    z: (N, D). mode: "l2" (unit sphere), "layernorm" (zero mean, unit variance per row), "none".
    """
    if mode == "l2":
        return F.normalize(z, dim=-1)
    if mode == "layernorm":
        return F.layer_norm(z, z.shape[-1:])
    if mode == "none":
        return z
    raise ValueError(f"normalize: unknown mode {mode!r}; expected 'l2', 'layernorm' or 'none'")


def label_augment(z: Tensor, y: Tensor, num_classes: int, label_cost: float) -> Tensor:
    """Append sqrt(β)·onehot(y) so that the cost ½‖x−x'‖² grows by exactly β on a label mismatch.

    ½‖√β(e_i − e_j)‖² = β for i ≠ j and 0 for i = j, so any squared-Euclidean OT backend becomes
    label-aware. z: (N, D), y: (N,) -> (N, D + num_classes).
    """
    onehot = F.one_hot(y, num_classes).to(z.dtype)
    return torch.cat([z, math.sqrt(label_cost) * onehot], dim=-1)


def _pad_by_class(z: Tensor, y: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """Group rows by class into a zero-padded batch, without a Python loop over classes.

    z: (N, D), y: (N,), classes: (C,) sorted labels to keep -> points (C, P, D), weights (C, P)
    with uniform weights per class and 0 on padding (P = largest class count).
    """
    keep = torch.isin(y, classes)
    z, y = z[keep], y[keep]
    slot = torch.searchsorted(classes, y)  # (N',) index of each row's class in `classes`
    order = torch.argsort(slot, stable=True)
    slot, z = slot[order], z[order]
    counts = torch.bincount(slot, minlength=len(classes))
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(slot), device=z.device) - starts[slot]
    width = int(counts.max())
    points = z.new_zeros(len(classes), width, z.shape[-1])
    points[slot, pos] = z
    weights = z.new_zeros(len(classes), width)
    weights[slot, pos] = 1.0 / counts[slot].to(z.dtype)
    return points, weights


def _shared_classes(y_s: Tensor, y_t: Tensor) -> Tensor:
    classes = torch.unique(y_s)
    classes = classes[torch.isin(classes, y_t)]
    if len(classes) == 0:
        raise ValueError("class-conditional alignment: the batches share no class")
    return classes


def _half_sq_cost(x: Tensor, y: Tensor) -> Tensor:
    """(B, N, D), (B, M, D) -> (B, N, M) cost ½‖x_i − y_j‖², by expansion (no (N, M, D) buffer)."""
    d = (
        (x * x).sum(-1)[..., :, None]
        + (y * y).sum(-1)[..., None, :]
        - 2.0 * x @ y.transpose(-1, -2)
    )
    return 0.5 * d.clamp_min(0.0)


def _sinkhorn_batched(
    x: Tensor,
    a: Tensor,
    y: Tensor,
    b: Tensor,
    epsilon: float,
    scaling: float,
    reach: float | None,
    refine: int,
) -> Tensor:
    """Debiased Sinkhorn divergence per batch row through geomloss's symmetric loop.

    x: (B, N, D), a: (B, N), y: (B, M, D), b: (B, M) -> (B,). geomloss anneals ε from the
    cloud diameter down to its target and stops there; ``refine`` extra iterations at the
    target ε remove the annealing bias (needed for small ε, see tests against POT).
    """
    # The second argument is detached, as in geomloss: the symmetric loop differentiates once.
    c_xy, c_yx = _half_sq_cost(x, y.detach()), _half_sq_cost(y, x.detach())
    c_xx, c_yy = _half_sq_cost(x, x.detach()), _half_sq_cost(y, y.detach())
    diameter = max_diameter(
        x.detach().reshape(-1, x.shape[-1]), y.detach().reshape(-1, y.shape[-1])
    )
    eps_list = epsilon_schedule(2, diameter, math.sqrt(epsilon), scaling) + [epsilon] * refine
    rho = None if reach is None else reach**2
    f_aa, g_bb, g_ab, f_ba = sinkhorn_loop(
        softmin_tensorized,
        log_weights(a),
        log_weights(b),
        c_xx,
        c_yy,
        c_xy,
        c_yx,
        eps_list,
        rho,
        debias=True,
    )
    return sinkhorn_cost(epsilon, rho, a, b, f_aa, g_bb, g_ab, f_ba, batch=True, debias=True)


def sinkhorn_divergence(
    z_s: Tensor,
    z_t: Tensor,
    *,
    epsilon: float = 0.1,
    scaling: float = 0.9,
    reach: float | None = None,
    refine: int = 10,
    y_s: Tensor | None = None,
    y_t: Tensor | None = None,
    num_classes: int | None = None,
    label_cost: float = 0.0,
    class_conditional: bool = False,
    normalize_mode: str = "l2",
) -> Tensor:
    """Feature alignment: debiased entropic OT divergence S_ε between the two feature clouds.

    S_ε(α, β) = OT_ε(α, β) − ½OT_ε(α, α) − ½OT_ε(β, β) with cost ½‖x − y‖², uniform weights
    and temperature ε (geomloss ``blur = sqrt(ε)``). S_ε ≈ 0 for identical clouds and grows with
    their distance. ``scaling`` ≥ 0.8: geomloss's default 0.5 can return negative values.
    ``reach`` gives unbalanced OT (tolerates label imbalance between the batches).

    Label-aware (``label_cost`` β > 0): the cost grows by β when y_i ≠ y_j (β ≥ the largest cost,
    2 on the unit sphere, forbids cross-class transport). Class-conditional: the mean over the
    classes both batches hold of S_ε between that class's clouds, solved as one padded batch.

    z_s: (N, D), z_t: (M, D) -> scalar.
    """
    check_finite("fa_sinkhorn", z_s=z_s, z_t=z_t)
    _check_same_dim("fa_sinkhorn", z_s, z_t)
    x, y = normalize(z_s, normalize_mode), normalize(z_t, normalize_mode)
    if label_cost > 0 or class_conditional:
        _need_labels("fa_sinkhorn", y_s, y_t)
    if label_cost > 0:
        k = num_classes or int(max(y_s.max(), y_t.max())) + 1
        x, y = label_augment(x, y_s, k, label_cost), label_augment(y, y_t, k, label_cost)
    if class_conditional:
        classes = _shared_classes(y_s, y_t)
        xb, a = _pad_by_class(x, y_s, classes)
        yb, b = _pad_by_class(y, y_t, classes)
    else:
        xb, yb = x[None], y[None]
        a = x.new_full((1, len(x)), 1.0 / len(x))
        b = y.new_full((1, len(y)), 1.0 / len(y))
    return _sinkhorn_batched(xb, a, yb, b, epsilon, scaling, reach, refine).mean()


def _sq_dist(x: Tensor, y: Tensor) -> Tensor:
    """(N, D), (M, D) -> (N, M) squared Euclidean distances, never negative."""
    return 2.0 * _half_sq_cost(x, y)


def mmd(
    z_s: Tensor,
    z_t: Tensor,
    *,
    multiplier: float = 1.0,
    num_kernels: int = 5,
    kernel_mul: float = 2.0,
    bandwidth: str = "median",
    y_s: Tensor | None = None,
    y_t: Tensor | None = None,
    label_cost: float = 0.0,
    class_conditional: bool = False,
    normalize_mode: str = "l2",
) -> Tensor:
    """Feature alignment: squared multi-kernel Gaussian MMD (biased V-statistic, ≥ 0).

    k(x, y) = (1/K) Σ_k exp(−d(x, y) / σ_k), d = ‖x − y‖² (+ β on a label mismatch when
    ``label_cost`` β > 0), σ_k = multiplier · base · kernel_mul^(k − (K−1)/2), where base is the
    median (or mean) pairwise squared distance of the pooled cloud, detached: the search tunes a
    scale-free multiplier, never an absolute σ. Class-conditional: the mean over shared classes
    of the MMD between that class's clouds, vectorised through one-hot sums.

    z_s: (N, D), z_t: (M, D) -> scalar.
    """
    check_finite("fa_mmd", z_s=z_s, z_t=z_t)
    _check_same_dim("fa_mmd", z_s, z_t)
    x, y = normalize(z_s, normalize_mode), normalize(z_t, normalize_mode)
    d_ss, d_tt, d_st = _sq_dist(x, x), _sq_dist(y, y), _sq_dist(x, y)
    base = _bandwidth_base(torch.cat([x, y]).detach(), bandwidth)
    if label_cost > 0 or class_conditional:
        _need_labels("fa_mmd", y_s, y_t)
    if label_cost > 0:
        d_ss = d_ss + label_cost * (y_s[:, None] != y_s[None, :])
        d_tt = d_tt + label_cost * (y_t[:, None] != y_t[None, :])
        d_st = d_st + label_cost * (y_s[:, None] != y_t[None, :])
    powers = torch.arange(num_kernels, dtype=x.dtype, device=x.device) - (num_kernels - 1) / 2
    sigmas = multiplier * base * kernel_mul**powers  # (K,)

    def kernel(d: Tensor) -> Tensor:
        return torch.exp(-d[..., None] / sigmas).mean(-1)

    k_ss, k_tt, k_st = kernel(d_ss), kernel(d_tt), kernel(d_st)
    if not class_conditional:
        return k_ss.mean() + k_tt.mean() - 2.0 * k_st.mean()
    classes = _shared_classes(y_s, y_t)
    o_s = (y_s[:, None] == classes[None, :]).to(x.dtype)  # (N, C)
    o_t = (y_t[:, None] == classes[None, :]).to(x.dtype)  # (M, C)
    n_s, n_t = o_s.sum(0), o_t.sum(0)  # (C,)
    s_ss = (o_s * (k_ss @ o_s)).sum(0) / n_s**2
    s_tt = (o_t * (k_tt @ o_t)).sum(0) / n_t**2
    s_st = (o_s * (k_st @ o_t)).sum(0) / (n_s * n_t)
    return (s_ss + s_tt - 2.0 * s_st).mean()


def _bandwidth_base(z: Tensor, how: str) -> Tensor:
    d = _sq_dist(z, z)
    off = d[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
    if how == "median":
        base = off.median()
    elif how == "mean":
        base = off.mean()
    else:
        raise ValueError(f"mmd: unknown bandwidth {how!r}; expected 'median' or 'mean'")
    return base.clamp_min(torch.finfo(z.dtype).eps)


def reference_ot(z_s: Tensor, z_t: Tensor, *, reg: float = 0.1, num_iter: int = 100) -> Tensor:
    """Feature alignment as the paper's public code computes it, kept for comparison.

    Label-agnostic entropic OT between the batches: uniform weights, cosine cost
    C_ij = 1 − <ẑ_s,i, ẑ_t,j>, ``num_iter`` plain Sinkhorn iterations at ``reg`` in POT's
    ``sinkhorn2`` order of updates, value <π, C>, differentiated through the unrolled iterations
    as autograd does with POT's torch backend. Not debiased: a cloud against itself is not 0.

    z_s: (N, D), z_t: (M, D) -> scalar.
    """
    check_finite("fa_reference_ot", z_s=z_s, z_t=z_t)
    _check_same_dim("fa_reference_ot", z_s, z_t)
    cost = 1.0 - F.normalize(z_s, dim=-1) @ F.normalize(z_t, dim=-1).T  # (N, M)
    a = cost.new_full((cost.shape[0],), 1.0 / cost.shape[0])
    b = cost.new_full((cost.shape[1],), 1.0 / cost.shape[1])
    k = torch.exp(-cost / reg)
    u, v = a.clone(), b.clone()
    for _ in range(num_iter):
        v = b / (k.T @ u)
        u = a / (k @ v)
    plan = u[:, None] * k * v[None, :]
    return (plan * cost).sum()


# ----------------------------------------------------------------------------- label alignment
# Each takes the student head's logits on z_s, ``logits_s`` (N, C), and/or the frozen teacher
# head's logits on the *same student features*, ``logits_t`` = h_t(z_s) (N, C).


def la_teacher_ce(logits_s: Tensor, logits_t: Tensor, y: Tensor) -> Tensor:
    """Label alignment: cross-entropy of the teacher head read on student features, CE(h_t(z_s), y).

    Its gradient flows through the frozen head into the student encoder and moves features
    toward the region the teacher head labels correctly. logits: (N, C), y: (N,) -> scalar.
    """
    check_finite("la_teacher_ce", logits_t=logits_t)
    return F.cross_entropy(logits_t, y)


def la_kl(
    logits_s: Tensor,
    logits_t: Tensor,
    y: Tensor,
    *,
    temperature: float = 1.0,
    detach_teacher: bool = True,
) -> Tensor:
    """Label alignment: T²·KL(softmax(h_t(z_s)/T) ‖ softmax(h_s(z_s)/T)), mean over the batch.

    With ``detach_teacher`` the teacher head's reading is a target (the student head and
    encoder move to agree with it); without, both sides move. logits: (N, C) -> scalar.
    """
    check_finite("la_kl", logits_s=logits_s, logits_t=logits_t)
    target = logits_t.detach() if detach_teacher else logits_t
    log_p_t = F.log_softmax(target / temperature, dim=-1)
    log_p_s = F.log_softmax(logits_s / temperature, dim=-1)
    return temperature**2 * F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")


def la_prior(
    logits_s: Tensor, logits_t: Tensor, y: Tensor, *, prior: Tensor | None = None
) -> Tensor:
    """Label alignment: KL(prior ‖ batch-mean teacher-head prediction on student features).

    Matches class proportions rather than samples; prior (C,) defaults to the batch's label
    histogram. logits_t: (N, C) -> scalar.
    """
    check_finite("la_prior", logits_t=logits_t)
    num_classes = logits_t.shape[-1]
    if prior is None:
        prior = torch.bincount(y, minlength=num_classes).to(logits_t.dtype) / len(y)
    mean_pred = F.softmax(logits_t, dim=-1).mean(0)
    support = prior > 0
    return (prior[support] * (prior[support].log() - mean_pred[support].log())).sum()


def la_kappa_reference(logits_s: Tensor, logits_t: Tensor, y: Tensor) -> Tensor:
    """Label alignment exactly as the paper's public code writes it, kept for comparison.

    mean_i κ_i · (log p_t(y_i|z_i) − log p_s(y_i|z_i)), κ_i = p_t(y_i|z_i) detached. Known
    defect: the −κ·CE_t part's gradient pushes student features *away* from the teacher's
    correct class (see tests); use ``la_teacher_ce`` or ``la_kl`` for training.
    """
    check_finite("la_kappa_reference", logits_s=logits_s, logits_t=logits_t)
    log_p_t = F.log_softmax(logits_t, dim=-1).gather(1, y[:, None]).squeeze(1)
    log_p_s = F.log_softmax(logits_s, dim=-1).gather(1, y[:, None]).squeeze(1)
    kappa = log_p_t.detach().exp()
    return (kappa * (log_p_t - log_p_s)).mean()


def kd_unpaired(
    logits_s: Tensor, logits_t: Tensor, y: Tensor, *, temperature: float = 4.0, alpha: float = 0.9
) -> Tensor:
    """Baseline: Hinton KD toward the teacher's logits on an *unpaired same-class* sample.

    α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·CE(s, y). logits_s: (N, C) on the student's
    inputs; logits_t: (N, C) the bank logits of teacher-modality samples of the same classes.
    """
    check_finite("kd_unpaired", logits_s=logits_s, logits_t=logits_t)
    kd = la_kl(logits_s, logits_t, y, temperature=temperature, detach_teacher=True)
    return alpha * kd + (1.0 - alpha) * F.cross_entropy(logits_s, y)


def feature_match(z_s: Tensor, z_t: Tensor, *, normalize_mode: str = "l2") -> Tensor:
    """Paired setting: ½‖n(z_s,i) − n(z_t,i)‖², mean over rows; row i of z_t is the partner of
    row i of z_s (the same instance in the teacher's modality). (N, D), (N, D) -> scalar."""
    check_finite("feature_match", z_s=z_s, z_t=z_t)
    _check_same_dim("feature_match", z_s, z_t)
    diff = normalize(z_s, normalize_mode) - normalize(z_t.detach(), normalize_mode)
    return 0.5 * diff.pow(2).sum(-1).mean()


def _check_same_dim(term: str, z_s: Tensor, z_t: Tensor) -> None:
    if z_s.shape[-1] != z_t.shape[-1]:
        raise ValueError(
            f"{term}: student features have size {z_s.shape[-1]} but teacher features have "
            f"size {z_t.shape[-1]}; give the student a projection to the teacher's size"
        )


def _need_labels(term: str, y_s: Tensor | None, y_t: Tensor | None) -> None:
    if y_s is None or y_t is None:
        raise ValueError(f"{term}: label-aware or class-conditional alignment needs y_s and y_t")


# ----------------------------------------------------------------------------- unlabelled pool
# An unlabelled pool of student-modality rows is what lets a teacher of another modality matter
# without pairs: its features are aligned to a teacher-bank sample by unbalanced OT (JUMBOT,
# Fatras et al. 2021; the joint cost of DeepJDOT, Damodaran et al. 2018), and the plan's class
# mass, the teacher head or the student's own head give pseudo-labels (FixMatch, Sohn et al.
# 2020) held to a class prior.


def unbalanced_sinkhorn_plan(
    cost: Tensor, a: Tensor, b: Tensor, *, epsilon: float, tau: float, iters: int = 200
) -> Tensor:
    """Entropic unbalanced OT plan (Chizat et al. 2018), by generalised Sinkhorn in the log domain.

    Minimises over P ≥ 0
        <P, C> + ε·KL(P | a⊗b) + τ·KL(P1 | a) + τ·KL(Pᵀ1 | b),
    KL(p | q) = Σ p log(p/q) − p + q (generalised KL, for unnormalised measures). This is POT's
    ``ot.unbalanced.sinkhorn_unbalanced(a, b, C, reg=ε, reg_m=τ)`` with its default
    ``reg_type="kl"`` (reference measure a⊗b, not the plain entropy of P), the same iterations
    (u from v, then v from u, starting from u = v = 1) written for the potentials f = ε log u,
    g = ε log v:
        f_i = −(τ/(τ+ε))·ε·log Σ_j b_j exp((g_j − C_ij)/ε),   g likewise,
        P_ij = a_i b_j exp((f_i + g_j − C_ij)/ε).
    Small τ lets the plan drop mass that has no good match (a class missing on one side);
    τ = inf gives balanced entropic OT (exact marginals). Stable for ε down to ~0.01 on O(1)
    costs; small ε and large τ converge slowly (the contraction factor is τ/(τ+ε)).

    cost: (N, M), a: (N,), b: (M,) nonnegative weights -> plan (N, M).
    """
    if cost.dim() != 2 or a.shape != cost.shape[:1] or b.shape != cost.shape[1:]:
        raise ValueError(
            f"unbalanced_sinkhorn_plan: expected cost (N, M), a (N,), b (M,); got "
            f"{tuple(cost.shape)}, {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if epsilon <= 0 or tau <= 0:
        raise ValueError(
            f"unbalanced_sinkhorn_plan: epsilon and tau must be > 0, got {epsilon}, {tau}"
        )
    fi = 1.0 if math.isinf(tau) else tau / (tau + epsilon)
    log_a, log_b = a.log(), b.log()  # log 0 = −inf: a row of zero weight carries no mass
    scaled = cost / epsilon
    f = cost.new_zeros(cost.shape[0])  # ε·log u
    g = cost.new_zeros(cost.shape[1])  # ε·log v
    for _ in range(iters):
        f = -fi * epsilon * torch.logsumexp(log_b[None, :] + g[None, :] / epsilon - scaled, dim=1)
        g = -fi * epsilon * torch.logsumexp(log_a[:, None] + f[:, None] / epsilon - scaled, dim=0)
    return torch.exp(log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :]) / epsilon - scaled)


def unbalanced_ot(
    z_u: Tensor,
    z_b: Tensor,
    *,
    b: Tensor | None = None,
    epsilon: float = 0.05,
    tau: float = 1.0,
    iters: int = 100,
    logits_u: Tensor | None = None,
    y_b: Tensor | None = None,
    joint: float = 0.0,
    normalize_mode: str = "l2",
) -> tuple[Tensor, Tensor]:
    """Label-agnostic unbalanced minibatch OT of unlabelled student features to a teacher-bank
    sample (JUMBOT, Fatras et al. 2021), optionally with DeepJDOT's joint cost.

    C_ij = ½‖x_i − y_j‖² (after ``normalize``) + joint·(−log softmax(logits_u)_i[y_b,j]): the
    second part, when joint > 0, charges transporting pool row i to bank row j by how little the
    student head believes in row j's label. Weights: a uniform, b (bank side, e.g. the class
    prior of each row divided by its class count in the sample) or uniform, both normalised to
    sum 1. The plan comes from :func:`unbalanced_sinkhorn_plan` on the detached cost (no gradient
    through the iterations); the loss Σ P ⊙ C has gradient through C only (into z_u, z_b and,
    with the joint cost, logits_u).

    z_u: (N, D), z_b: (M, D), b: (M,), logits_u: (N, C), y_b: (M,) -> (loss scalar,
    plan (N, M) detached).
    """
    check_finite("uot", z_u=z_u, z_b=z_b, logits_u=logits_u, b=b)
    _check_same_dim("uot", z_u, z_b)
    if joint > 0 and (logits_u is None or y_b is None):
        raise ValueError("uot: the joint cost (joint > 0) needs logits_u and y_b")
    x, y = normalize(z_u, normalize_mode), normalize(z_b, normalize_mode)
    cost = _half_sq_cost(x, y)  # (N, M)
    if joint > 0:
        cost = cost - joint * F.log_softmax(logits_u, dim=-1)[:, y_b]
    a = cost.new_full((len(x),), 1.0 / len(x))
    if b is None:
        b = cost.new_full((len(y),), 1.0 / len(y))
    elif b.shape != (len(y),):
        raise ValueError(f"uot: b has shape {tuple(b.shape)}, expected ({len(y)},)")
    else:
        b = b.detach().to(cost.dtype)
        b = b / b.sum()
    with torch.no_grad():
        plan = unbalanced_sinkhorn_plan(cost.detach(), a, b, epsilon=epsilon, tau=tau, iters=iters)
    return (plan * cost).sum(), plan


def plan_class_probs(plan: Tensor, y_b: Tensor, num_classes: int) -> Tensor:
    """Per pool row, the class distribution of the mass it sends to the bank (OT pseudo-labels).

    plan: (N, M), y_b: (M,) labels of the bank rows -> (N, C), rows summing to 1 (uniform for a
    row that sends no mass).
    """
    mass = plan @ F.one_hot(y_b, num_classes).to(plan.dtype)  # (N, C)
    total = mass.sum(-1, keepdim=True)
    uniform = torch.full_like(mass, 1.0 / num_classes)
    return torch.where(total > 0, mass / total.clamp_min(torch.finfo(mass.dtype).tiny), uniform)


def confident_labels(probs: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Hard labels and which rows are confident. probs: (N, C) -> (labels (N,) long,
    mask (N,) bool: max prob ≥ threshold)."""
    top, labels = probs.max(dim=-1)
    return labels, top >= threshold


def pseudo_label_ce(logits: Tensor, probs: Tensor, threshold: float) -> Tensor:
    """FixMatch (Sohn et al. 2020): cross-entropy of the strong view's logits against the hard
    pseudo-labels argmax(probs) of the weak view (detached), counted only where max(probs) ≥
    threshold and averaged over all N rows, so the term shrinks when few rows are confident
    (0, with a gradient, when none is).

    logits: (N, C), probs: (N, C) -> scalar.
    """
    check_finite("pseudo_label_ce", logits=logits, probs=probs)
    labels, mask = confident_labels(probs.detach(), threshold)
    ce = F.cross_entropy(logits, labels, reduction="none")  # (N,)
    return (ce * mask.to(ce.dtype)).sum() / len(ce)


def prior_match(logits: Tensor, prior: Tensor) -> Tensor:
    """Class-prior matching of the mean prediction, KL(prior ‖ mean_i softmax(logits_i)).

    Pushes the pool's predicted class proportions toward the prior; a uniform prior is the
    class-balance term that keeps self-training from collapsing onto a few classes. The log of
    the mean prediction is taken by logsumexp (finite even where a class is nearly never
    predicted). logits: (N, C), prior: (C,) summing to 1 -> scalar ≥ 0.
    """
    check_finite("prior_match", logits=logits, prior=prior)
    if prior.shape != logits.shape[-1:]:
        raise ValueError(
            f"prior_match: prior has shape {tuple(prior.shape)}, expected ({logits.shape[-1]},)"
        )
    log_mean = torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(len(logits))
    prior = prior.to(logits.dtype)
    support = prior > 0
    return (prior[support] * (prior[support].log() - log_mean[support])).sum()
