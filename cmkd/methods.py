"""One training step per distillation algorithm, and the two read-outs of a student.

Every step takes the student, the frozen teacher head ``h_t``, the student's optimizer and a
:class:`Batch` of student samples with *unpaired* teacher-bank rows, updates the student once and
returns the named loss terms as floats. The teacher is never run: its features and logits come
from the bank. Choosing an algorithm is one lookup in :data:`ALGORITHMS`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkd import losses
from cmkd.models import Student


@dataclass(frozen=True)
class Batch:
    """Student samples and unpaired teacher-bank rows drawn for them.

    x_s: (B, *in_shape) student inputs; y_s: (B,). z_t: (M, D_t) teacher features and
    logits_t: (M, C) teacher logits of teacher-modality samples, y_t: (M,) their labels. With
    class-matched sampling M = B and y_t == y_s row by row (same class, never the same instance);
    paired (``pairing: paired``), row i is the partner of student row i (the same instance).
    """

    x_s: Tensor
    y_s: Tensor
    z_t: Tensor
    y_t: Tensor
    logits_t: Tensor
    pool: PoolBatch | None = None


@dataclass(frozen=True)
class PoolBatch:
    """Unlabelled student rows drawn for one step, and what the pool terms compare them with.

    x_weak, x_strong: (U, *in_shape) two augmented views of the same pool rows. z_b: (M, D_t),
    y_b: (M,) a sample of teacher-bank rows drawn independently of any label, b: (M,) their OT
    weights (the class prior the pool is aligned to, spread over the sample's rows of each class).
    prior: (C,) that prior. ramp: the pool terms' weight factor in [0, 1] (linear ramp-up).
    """

    x_weak: Tensor
    x_strong: Tensor
    z_b: Tensor
    y_b: Tensor
    b: Tensor
    prior: Tensor
    ramp: float = 1.0
    z_p: Tensor | None = None
    """Paired: (U, D_t) the bank features of each pool row's partner (None: no partners)."""
    logits_p: Tensor | None = None
    """Paired: (U, C) the bank logits of each pool row's partner."""


FeatureTerm = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (z_s, z_t, y_s, y_t) -> ()
LabelTerm = Callable[[Tensor, Tensor, Tensor], Tensor]  # (logits_s, h_t(z_s), y_s) -> ()


def _fa_reference(z_s, z_t, y_s, y_t, **kw):
    return losses.reference_ot(z_s, z_t, **kw)


def _fa_labelled(fn):
    def term(z_s, z_t, y_s, y_t, **kw):
        return fn(z_s, z_t, y_s=y_s, y_t=y_t, **kw)

    return term


FA_TERMS: dict[str, Callable[..., Tensor]] = {
    "sinkhorn": _fa_labelled(losses.sinkhorn_divergence),
    "mmd": _fa_labelled(losses.mmd),
    "reference_ot": _fa_reference,
}
LA_TERMS: dict[str, Callable[..., Tensor]] = {
    "teacher_ce": losses.la_teacher_ce,
    "kl": losses.la_kl,
    "prior": losses.la_prior,
    "kappa_reference": losses.la_kappa_reference,
}


def make_fa(name: str, **kwargs) -> FeatureTerm:
    """A feature-alignment term (z_s, z_t, y_s, y_t) -> scalar with its hyperparameters bound."""
    if name not in FA_TERMS:
        raise ValueError(f"unknown feature alignment {name!r}; expected one of {sorted(FA_TERMS)}")
    return partial(FA_TERMS[name], **kwargs)


def make_la(name: str, **kwargs) -> LabelTerm:
    """A label-alignment term (logits_s, h_t(z_s), y_s) -> scalar with its hyperparameters bound."""
    if name not in LA_TERMS:
        raise ValueError(f"unknown label alignment {name!r}; expected one of {sorted(LA_TERMS)}")
    return partial(LA_TERMS[name], **kwargs)


def teacher_head_logits(h_t: nn.Module, z_s: Tensor) -> Tensor:
    """The frozen teacher head read on student features, h_t(z_s): (B, D_t) -> (B, C).

    No silent fallback when the sizes differ: the student needs a projection to D_t.
    """
    expected = getattr(h_t, "in_features", None)
    if expected is not None and z_s.shape[-1] != expected:
        raise ValueError(
            f"label alignment reads student features with the teacher head, which takes "
            f"{expected} features, but the student gives {z_s.shape[-1]}; build the student "
            f"with teacher_dim={expected} (adds a projection)"
        )
    return h_t(z_s)


def _total(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """Weighted sum of the terms; names the term(s) that went non-finite."""
    bad = [f"{k}={v.item()}" for k, v in terms.items() if not torch.isfinite(v)]
    if bad:
        raise losses.NonFiniteError(f"non-finite loss term(s): {', '.join(bad)}")
    return sum(weights.get(k, 1.0) * v for k, v in terms.items())


def _sync(opt) -> None:
    """Average gradients across data-parallel ranks when the optimizer knows how (before any
    clipping, as DDP does); a plain optimizer has no ``sync_gradients`` and nothing happens."""
    sync = getattr(opt, "sync_gradients", None)
    if sync is not None:
        sync()


def _update(opt: torch.optim.Optimizer, loss: Tensor, student: nn.Module, grad_clip: float | None):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    _sync(opt)
    if grad_clip:
        nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
    opt.step()


def _report(loss: Tensor, terms: dict[str, Tensor]) -> dict[str, float]:
    return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}


def ce_step(student: Student, h_t: nn.Module, opt, batch: Batch):
    """No distillation: plain cross-entropy training on the student's labels."""
    terms = {"ce": F.cross_entropy(student(batch.x_s), batch.y_s)}
    loss = _total(terms, {})
    _update(opt, loss, student, None)
    return _report(loss, terms)


def kd_unpaired_step(
    student: Student,
    h_t: nn.Module,
    opt,
    batch: Batch,
    *,
    kd_temperature: float = 4.0,
    kd_alpha: float = 0.9,
):
    """Baseline: Hinton KD toward the logits of a same-class, unpaired teacher sample."""
    if batch.y_t.shape != batch.y_s.shape or not torch.equal(batch.y_t, batch.y_s):
        raise ValueError("kd_unpaired needs class-matched teacher rows (y_t == y_s row by row)")
    logits_s = student(batch.x_s)
    terms = {
        "kd": losses.kd_unpaired(
            logits_s, batch.logits_t, batch.y_s, temperature=kd_temperature, alpha=kd_alpha
        ),
    }
    loss = _total(terms, {})
    _update(opt, loss, student, None)
    return {**_report(loss, terms), "ce": F.cross_entropy(logits_s.detach(), batch.y_s).item()}


def fa_only_step(
    student: Student,
    h_t: nn.Module,
    opt,
    batch: Batch,
    *,
    fa: FeatureTerm,
    w_fa: float = 1.0,
    grad_clip: float | None = None,
    **pair,
):
    """Cross-entropy plus feature alignment only (UCMKD's sum with label alignment off); the
    paired setting's terms (``pair``: w_kd, w_fm, ...) pass through."""
    return ucmkd_sum_step(
        student, h_t, opt, batch, fa=fa, la=None, w_fa=w_fa, w_la=0.0, grad_clip=grad_clip, **pair
    )


def ucmkd_sum_step(
    student: Student,
    h_t: nn.Module,
    opt,
    batch: Batch,
    *,
    fa: FeatureTerm,
    la: LabelTerm | None,
    w_fa: float = 1.0,
    w_la: float = 1.0,
    grad_clip: float | None = 5.0,
    w_kd: float = 0.0,
    w_fm: float = 0.0,
    kd_temperature: float = 4.0,
    normalize_mode: str = "l2",
):
    """UCMKD, summed objective: CE + w_fa·FA(z_s, z_t) + w_la·LA(h_s(z_s), h_t(z_s)); paired,
    also + w_kd·KD + w_fm·FM toward each row's partner (:func:`_pair_terms`)."""
    z_s = student.features(batch.x_s)
    logits_s = student.head(z_s)
    terms = {"ce": F.cross_entropy(logits_s, batch.y_s)}
    if w_fa > 0:  # the search may switch a term off; do not pay for it then
        terms["fa"] = fa(z_s, batch.z_t, batch.y_s, batch.y_t)
    if w_la > 0:
        terms["la"] = la(logits_s, teacher_head_logits(h_t, z_s), batch.y_s)
    pair = {"w_kd": w_kd, "w_fm": w_fm}
    terms.update(
        _pair_terms(
            z_s,
            logits_s,
            batch,
            None,
            None,
            **pair,
            kd_temperature=kd_temperature,
            normalize_mode=normalize_mode,
        )
    )
    loss = _total(terms, {"fa": w_fa, "la": w_la, "pair_kd": w_kd, "fm": w_fm})
    _update(opt, loss, student, grad_clip)
    return _report(loss, terms)


def ucmkd_bilevel_step(
    student: Student,
    h_t: nn.Module,
    opt,
    batch: Batch,
    *,
    fa: FeatureTerm,
    la: LabelTerm,
    w_fa: float = 1.0,
    w_la: float = 1.0,
    inner_lr: float = 3e-5,
    n1: int = 1,
    n2: int = 1,
    grad_clip: float | None = 5.0,
):
    """UCMKD, bilevel ("Ours"), first-order look-ahead.

    On a copy of the student: n1 steps on w_fa·FA, then n2 steps on w_la·LA (encoder and head:
    the teacher-head part carries gradient into the encoder), AdamW(inner_lr, wd 0.05). The
    gradient of CE at the copy is then applied to the real student by ``opt``, and the copy's
    BatchNorm statistics are copied back (the real student ran no forward pass).
    """
    look = copy.deepcopy(student)
    inner = torch.optim.AdamW(look.parameters(), lr=inner_lr, weight_decay=0.05)
    fa_vals, la_vals = [], []
    for _ in range(n1 if w_fa > 0 else 0):
        z = look.features(batch.x_s)
        term = fa(z, batch.z_t, batch.y_s, batch.y_t)
        _update(inner, w_fa * _total({"fa": term}, {}), look, grad_clip)
        fa_vals.append(term.detach())
    for _ in range(n2 if w_la > 0 else 0):
        z = look.features(batch.x_s)
        term = la(look.head(z), teacher_head_logits(h_t, z), batch.y_s)
        _update(inner, w_la * _total({"la": term}, {}), look, grad_clip)
        la_vals.append(term.detach())
    ce = _total({"ce": F.cross_entropy(look(batch.x_s), batch.y_s)}, {})
    params = [p for p in student.parameters() if p.requires_grad]
    look_params = [p for p in look.parameters() if p.requires_grad]
    grads = torch.autograd.grad(ce, look_params, allow_unused=True)
    opt.zero_grad(set_to_none=True)
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.detach().clone()
    _sync(opt)
    if grad_clip:
        nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    for b_real, b_look in zip(student.buffers(), look.buffers(), strict=True):
        b_real.copy_(b_look)
    out = {"loss": ce.item(), "ce": ce.item()}
    if fa_vals:
        out["fa"] = torch.stack(fa_vals).mean().item()
    if la_vals:
        out["la"] = torch.stack(la_vals).mean().item()
    return out


def _pool_forward(student: Student, batch: Batch) -> tuple[Tensor, ...]:
    """One forward pass over the labelled rows and both views of the pool rows (BatchNorm sees
    them together). -> features and logits of each: z_s, logits_s, z_w, logits_w, logits_strong."""
    pool = batch.pool
    if pool is None:
        raise ValueError(
            "this algorithm trains on an unlabelled pool, but the run has none: give the "
            "benchmark a {student}_unlabelled.parquet (data.unlabelled)"
        )
    sizes = [len(batch.x_s), len(pool.x_weak), len(pool.x_strong)]
    z = student.features(torch.cat([batch.x_s, pool.x_weak, pool.x_strong]))
    logits = student.head(z)
    (z_s, z_w, _), (l_s, l_w, l_strong) = z.split(sizes), logits.split(sizes)
    return z_s, l_s, z_w, l_w, l_strong


def ssl_step(
    student: Student,
    h_t: nn.Module,
    opt,
    batch: Batch,
    *,
    w_pl: float = 1.0,
    pl_threshold: float = 0.9,
    w_prior: float = 1.0,
    grad_clip: float | None = 5.0,
):
    """The pool without a teacher: CE on the labels, the student's own confident pseudo-labels
    (weak view) taught to the strong view (FixMatch), and the pool's mean prediction aligned to a
    class prior (uniform, or the bank's class histogram: ``pool.prior``). No teacher feature and
    no teacher prediction is read."""
    pool = batch.pool
    _, logits_s, _, logits_w, logits_strong = _pool_forward(student, batch)
    terms = {"ce": F.cross_entropy(logits_s, batch.y_s)}
    probs = F.softmax(logits_w.detach(), dim=-1)
    if w_pl > 0:
        terms["pl"] = losses.pseudo_label_ce(logits_strong, probs, pl_threshold)
    if w_prior > 0:
        terms["prior"] = losses.prior_match(logits_w, pool.prior)
    loss = _total(terms, {"pl": pool.ramp * w_pl, "prior": pool.ramp * w_prior})
    _update(opt, loss, student, grad_clip)
    return {**_report(loss, terms), "pl_kept": _kept(probs, pl_threshold)}


def _kept(probs: Tensor, threshold: float) -> float:
    """Share of pool rows confident enough to get a pseudo-label."""
    return (probs.max(-1).values >= threshold).double().mean().item()


def ucmkd_pool_step(
    student: Student,
    h_t: nn.Module,
    opt,
    batch: Batch,
    *,
    fa: FeatureTerm,
    la: LabelTerm,
    w_fa: float = 1.0,
    w_la: float = 1.0,
    w_uot: float = 1.0,
    uot: dict | None = None,
    w_pl: float = 1.0,
    pl_source: str = "teacher_plan",
    pl_threshold: float = 0.9,
    w_prior: float = 1.0,
    grad_clip: float | None = 5.0,
    w_kd: float = 0.0,
    w_fm: float = 0.0,
    kd_temperature: float = 4.0,
    normalize_mode: str = "l2",
):
    """UCMKD with an unlabelled student pool: on the labelled rows CE + w_fa·FA (class-matched
    bank rows) + w_la·LA; on the pool, label-agnostic unbalanced OT of its features to a bank
    sample (w_uot), pseudo-labels from ``pl_source`` (the teacher head on the student's features,
    the OT plan's class mass, their mean, or the student's own head) taught to the strong view
    (w_pl), and class-prior matching of its mean prediction (w_prior). The pool terms ramp up.
    Paired, the bank sample is the pool rows' partners, and w_kd, w_fm add the instance-level
    terms on every row with a partner (:func:`_pair_terms`, not ramped)."""
    pool = batch.pool
    z_s, logits_s, z_w, logits_w, logits_strong = _pool_forward(student, batch)
    terms = {"ce": F.cross_entropy(logits_s, batch.y_s)}
    if w_fa > 0:
        terms["fa"] = fa(z_s, batch.z_t, batch.y_s, batch.y_t)
    if w_la > 0:
        terms["la"] = la(logits_s, teacher_head_logits(h_t, z_s), batch.y_s)
    uot = {"epsilon": 0.05, "tau": 1.0, "joint": 0.0, **(uot or {})}
    plan = None
    if w_uot > 0 or pl_source in ("plan", "teacher_plan"):
        with torch.set_grad_enabled(w_uot > 0):
            uot_loss, plan = losses.unbalanced_ot(
                z_w, pool.z_b, b=pool.b, logits_u=logits_w, y_b=pool.y_b, **uot
            )
        if w_uot > 0:
            terms["uot"] = uot_loss
    num_classes = logits_w.shape[-1]
    sources = {
        "student": lambda: F.softmax(logits_w.detach(), dim=-1),
        "teacher_head": lambda: F.softmax(teacher_head_logits(h_t, z_w.detach()), dim=-1),
        "plan": lambda: losses.plan_class_probs(plan, pool.y_b, num_classes),
    }
    if pl_source == "teacher_plan":
        probs = 0.5 * (sources["teacher_head"]() + sources["plan"]())
    elif pl_source in sources:
        probs = sources[pl_source]()
    else:
        raise ValueError(f"pl_source {pl_source!r}: expected one of {[*sources, 'teacher_plan']}")
    if w_pl > 0:
        terms["pl"] = losses.pseudo_label_ce(logits_strong, probs, pl_threshold)
    if w_prior > 0:
        terms["prior"] = losses.prior_match(logits_w, pool.prior)
    terms.update(
        _pair_terms(
            z_s,
            logits_s,
            batch,
            z_w,
            logits_w,
            w_kd=w_kd,
            w_fm=w_fm,
            kd_temperature=kd_temperature,
            normalize_mode=normalize_mode,
        )
    )
    ramp = pool.ramp
    weights = {"fa": w_fa, "la": w_la, "uot": ramp * w_uot, "pl": ramp * w_pl}
    weights.update({"pair_kd": w_kd, "fm": w_fm})
    loss = _total(terms, {**weights, "prior": ramp * w_prior})
    _update(opt, loss, student, grad_clip)
    return {**_report(loss, terms), "pl_kept": _kept(probs, pl_threshold)}


def _pair_terms(
    z_s: Tensor,
    logits_s: Tensor,
    batch: Batch,
    z_w: Tensor | None,
    logits_w: Tensor | None,
    *,
    w_kd: float,
    w_fm: float,
    kd_temperature: float,
    normalize_mode: str,
) -> dict[str, Tensor]:
    """The paired setting's instance-level terms over every row with a partner: the labelled
    rows (partners in ``batch.z_t``/``logits_t``) and, when the pool has partners, its rows (weak
    view, ``z_w``/``logits_w``). ``pair_kd``: T²·KL toward the partner's softened logits;
    ``fm``: feature matching to the partner. Weights 0 compute nothing."""
    pool = batch.pool
    with_pool = pool is not None and pool.z_p is not None and z_w is not None
    terms = {}
    if w_kd > 0:
        s, t = (
            (torch.cat([logits_s, logits_w]), torch.cat([batch.logits_t, pool.logits_p]))
            if with_pool
            else (logits_s, batch.logits_t)
        )
        terms["pair_kd"] = losses.la_kl(s, t, None, temperature=kd_temperature)
    if w_fm > 0:
        s, t = (
            (torch.cat([z_s, z_w]), torch.cat([batch.z_t, pool.z_p]))
            if with_pool
            else (z_s, batch.z_t)
        )
        terms["fm"] = losses.feature_match(s, t, normalize_mode=normalize_mode)
    return terms


def kd_step(
    student: Student,
    h_t: nn.Module,
    opt,
    batch: Batch,
    *,
    kd_temperature: float = 4.0,
    kd_alpha: float = 0.9,
    w_fm: float = 0.0,
    normalize_mode: str = "l2",
    grad_clip: float | None = 5.0,
):
    """Paired Hinton KD: (1 − α)·CE on the labels + α·T²·KL toward each row's partner's logits,
    over the labelled rows and the pool rows that have partners (their weak view; a pool row's
    partner is its only target), + w_fm·feature matching to the partners. The batch's teacher
    rows must be the partners (``pairing: paired``)."""
    pool = batch.pool if batch.pool is not None and batch.pool.z_p is not None else None
    if pool is not None:
        z = student.features(torch.cat([batch.x_s, pool.x_weak]))
        z_s, z_w = z.split([len(batch.x_s), len(pool.x_weak)])
        logits_s, logits_w = student.head(z_s), student.head(z_w)
    else:
        z_s = student.features(batch.x_s)
        logits_s, z_w, logits_w = student.head(z_s), None, None
    terms = {"ce": F.cross_entropy(logits_s, batch.y_s)}
    terms.update(
        _pair_terms(
            z_s,
            logits_s,
            batch,
            z_w,
            logits_w,
            w_kd=1.0,
            w_fm=w_fm,
            kd_temperature=kd_temperature,
            normalize_mode=normalize_mode,
        )
    )
    loss = _total(terms, {"ce": 1.0 - kd_alpha, "pair_kd": kd_alpha, "fm": w_fm})
    _update(opt, loss, student, grad_clip)
    return _report(loss, terms)


ALGORITHMS: dict[str, Callable[..., dict[str, float]]] = {
    "ce": ce_step,
    "kd_unpaired": kd_unpaired_step,
    "kd": kd_step,
    "fa_only": fa_only_step,
    "ucmkd_sum": ucmkd_sum_step,
    "ucmkd_bilevel": ucmkd_bilevel_step,
    "ucmkd_pool": ucmkd_pool_step,
    "ssl": ssl_step,
}


def make_step(algorithm: str, **hyper) -> Callable[[Student, nn.Module, object, Batch], dict]:
    """Bind an algorithm's hyperparameters; those it does not take are dropped.

    The search space is conditional (an inner lr only means something for ``ucmkd_bilevel``),
    so a trial's flat hyperparameter dict may carry keys a given algorithm ignores.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {sorted(ALGORITHMS)}")
    step = ALGORITHMS[algorithm]
    accepted = inspect.signature(step).parameters
    return partial(step, **{k: v for k, v in hyper.items() if k in accepted})


@torch.no_grad()
def evaluate(
    student: Student,
    h_t: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 512,
    per_sample: bool = False,
) -> dict:
    """Accuracy of the student read out through its own head and through the teacher head.

    x: (N, *in_shape), y: (N,). Returns counts too, so ranks can sum before dividing; with
    ``per_sample``, also ``samples``: {"acc", "acc_teacher_head", "ce"}, each (N,) float64
    (correct 0/1, per-sample cross-entropy), for paired comparisons on the same rows.
    """
    was_training = student.training
    student.eval()
    device = next(student.parameters()).device  # rows move to the model a chunk at a time
    parts: dict[str, list[Tensor]] = {"acc": [], "acc_teacher_head": [], "ce": []}
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            z = student.features(x[i : i + batch_size].to(device))
            yb = y[i : i + batch_size].to(device)
            logits = student.head(z)
            parts["ce"].append(F.cross_entropy(logits, yb, reduction="none").double())
            parts["acc"].append((logits.argmax(-1) == yb).double())
            parts["acc_teacher_head"].append(
                (teacher_head_logits(h_t, z).argmax(-1) == yb).double()
            )
    student.train(was_training)
    n = max(len(x), 1)
    cat = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64) for k, v in parts.items()}
    out = {k: v.sum().item() / n for k, v in cat.items()}
    out["n"] = len(x)
    # per class: rows and correct rows of each head, summed across ranks before balanced accuracy
    num_classes = student.head.out_features
    yc = y.to(torch.int64).cpu()
    out["class_n"] = torch.bincount(yc, minlength=num_classes).double().tolist()
    for k in ("acc", "acc_teacher_head"):
        out[f"class_{k}"] = (
            torch.bincount(yc, weights=cat[k].cpu(), minlength=num_classes).tolist()
            if len(yc)
            else [0.0] * num_classes
        )
    if per_sample:
        out["samples"] = {k: v.cpu().numpy() for k, v in cat.items()}
    return out
