"""Before a sweep: is distillation from this teacher likely to help this student?

    python -m cmkd.diagnose                                  # sonified, with its pool
    python -m cmkd.diagnose --control permuted               # its permuted-label teacher
    python -m cmkd.diagnose --benchmark synth --unlabelled 0
    python -m cmkd.diagnose --benchmark avdigits --teacher image --student audio --labels-per-class 5

The paper bounds the student's error by the teacher's error plus a feature-alignment term (how
far the student's class-conditional feature distributions are from the teacher's) and a
label-alignment term (how well the teacher head reads the student's features). Distillation can
only help when both can be made small, i.e. when the class structure the teacher's features
encode is one the student's modality also shows. This command estimates both in minutes:

1. a student encoder is warmed up briefly with cross-entropy on its few labels; when the
   benchmark has an unlabelled pool of the student's modality, it learns the pool too, with no
   teacher (``ssl``: its own confident pseudo-labels aligned to a uniform class prior, strong
   augmentation), since that is the student the teacher's pool terms start from, and a CE-only
   warm-up beside it says what the pool alone gives;
2. its features are mapped into the teacher's feature space by the best rotation and scale
   (orthogonal Procrustes) fitted on the *labelled* class means only;
3. on the student's validation split, FA is the class-conditional debiased Sinkhorn divergence
   (and MMD) between the mapped student features and the teacher bank, on L2-normalised
   features (as the training losses do); LA is the teacher head's accuracy on the mapped
   features and KL(teacher-head reading ‖ student head);
4. the same numbers with the teacher's classes randomly relabelled (the rotation refitted to the
   shuffled class correspondence) are the reference: with a random correspondence a rotation
   still aligns some of the geometry, so what matters is how far the true correspondence does
   better. The teacher's own between-class divergence and a random-init student are printed
   as scales too. With a pool, a third quantity: how often the teacher head's reading of the
   mapped pool rows agrees with the student's own prediction (what the teacher's pseudo-labels
   would be worth), against the same shuffled correspondences.

Verdict: "likely to help" when both FA and LA are clearly better under the true correspondence
than under shuffled ones, "unlikely" when neither is, "unclear" otherwise. The maths here knows
nothing of Ray.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cmkd import cli, losses
from cmkd.bank import TEACHER_CONTROLS, control_bank
from cmkd.config import ConfigError, DataConfig, DistillConfig
from cmkd.methods import evaluate, teacher_head_logits
from cmkd.train import BUILTIN, Run, RunData, check_benchmark, load_run_data

Z_HELPS = 2.0
"""How many standard deviations of the shuffled-correspondence reference a quantity must beat."""


def class_means(z: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """Mean feature of every class. z: (N, D), y: (N,) -> (C, D) (zeros for an absent class)."""
    onehot = F.one_hot(y, num_classes).to(z.dtype)  # (N, C)
    return (onehot.T @ z) / onehot.sum(0).clamp_min(1)[:, None]


@dataclass(frozen=True)
class Similarity:
    """x -> scale * (x - mu_s) @ rot + mu_t: the student-to-teacher map of :func:`procrustes`."""

    rot: Tensor  # (D, D) orthogonal
    scale: float
    mu_s: Tensor  # (D,)
    mu_t: Tensor  # (D,)

    def __call__(self, z: Tensor) -> Tensor:
        return self.scale * (z - self.mu_s) @ self.rot + self.mu_t


def procrustes(m_s: Tensor, m_t: Tensor) -> Similarity:
    """Best rotation and scale taking the student's class means onto the teacher's.

    min over orthogonal R and s of ‖s (m_s − μ_s) R − (m_t − μ_t)‖²: with U Σ Vᵀ = svd(A_sᵀ A_t)
    of the centred means, R = U Vᵀ and s = tr Σ / ‖A_s‖². A rotation keeps the student's class
    geometry; only a geometry the two modalities share can be aligned by it.
    m_s, m_t: (C, D) -> Similarity.
    """
    mu_s, mu_t = m_s.mean(0), m_t.mean(0)
    a_s, a_t = m_s - mu_s, m_t - mu_t
    u, sig, vh = torch.linalg.svd(a_s.T @ a_t)
    scale = float(sig.sum() / (a_s**2).sum().clamp_min(1e-12))
    return Similarity(u @ vh, scale, mu_s, mu_t)


@torch.no_grad()
def alignment(
    z_fit: Tensor,
    y_fit: Tensor,
    z_s: Tensor,
    y_s: Tensor,
    logits_s: Tensor,
    z_t: Tensor,
    y_t: Tensor,
    h_t: torch.nn.Module,
    num_classes: int,
    *,
    perm: Tensor | None = None,
    epsilon: float = 0.1,
    z_pool: Tensor | None = None,
    logits_pool: Tensor | None = None,
) -> dict[str, float]:
    """The two quantities for one class correspondence (teacher labels ``y_t``).

    z_fit, y_fit: (n, D), (n,) labelled student features the map is fitted on; z_s, y_s:
    (N, D), (N,) held-out student features and labels, logits_s: (N, C) their student-head
    logits; z_t, y_t: (M, D), (M,) teacher bank features and their labels in the student's class
    space: ``perm[j]`` (C,) is the student class matched to the teacher head's class j
    (identity when None), so y_t = perm[teacher label]. Returns fa_sinkhorn, fa_mmd
    (class-conditional, normalised features), la_acc (teacher head on the mapped features),
    la_kl (KL(h_t reading ‖ student head), nats); with unlabelled pool features z_pool (P, D)
    and their student-head logits (P, C), pool_agree: the share of pool rows where the teacher
    head's reading of the mapped feature is the student's own prediction.
    """
    sim = procrustes(class_means(z_fit, y_fit, num_classes), class_means(z_t, y_t, num_classes))
    mapped = sim(z_s)
    fa_s = losses.sinkhorn_divergence(
        mapped, z_t, y_s=y_s, y_t=y_t, class_conditional=True, epsilon=epsilon
    )
    fa_m = losses.mmd(mapped, z_t, y_s=y_s, y_t=y_t, class_conditional=True)
    read = _read(h_t, mapped, perm)
    kl = F.kl_div(
        F.log_softmax(logits_s, -1), F.log_softmax(read, -1), log_target=True, reduction="batchmean"
    )
    out = {
        "fa_sinkhorn": float(fa_s.detach()),
        "fa_mmd": float(fa_m.detach()),
        "la_acc": float((read.argmax(-1) == y_s).float().mean()),
        "la_kl": float(kl.detach()),
    }
    if z_pool is not None and logits_pool is not None:
        agree = _read(h_t, sim(z_pool), perm).argmax(-1) == logits_pool.argmax(-1)
        out["pool_agree"] = float(agree.float().mean())
    return out


def _read(h_t: torch.nn.Module, mapped: Tensor, perm: Tensor | None) -> Tensor:
    """The teacher head's logits of mapped features, columns in the student's class order."""
    read = teacher_head_logits(h_t, mapped)  # (N, C), in the teacher head's class order
    if perm is not None:  # column perm[j] of the student's order is the head's class j
        read = read[:, torch.argsort(perm)]
    return read


@dataclass
class Diagnosis:
    """What :func:`diagnose` measured, and its verdict."""

    benchmark: str
    student: str
    teacher: str
    labels_per_class: int | str
    num_classes: int
    true: dict[str, float]
    """FA and LA under the true class correspondence (warmed-up student)."""
    shuffled_mean: dict[str, float]
    shuffled_std: dict[str, float]
    """The same under random relabellings of the teacher's classes."""
    random_init: dict[str, float]
    """The same for an untrained student (true correspondence)."""
    teacher_between_class: float
    """Sinkhorn divergence between the teacher's class c and class c+1 features (a scale)."""
    teacher_head_acc: float
    """The teacher head on the teacher's own bank features (LA's ceiling)."""
    student_val_acc: float
    """The warmed-up student's own head on its validation split."""
    z: dict[str, float] = field(default_factory=dict)
    """(true − shuffled mean) / shuffled std for each quantity."""
    warmup: str = "ce"
    """The warm-up's algorithm: ce, or ssl when the student learnt its unlabelled pool."""
    pool_rows: int = 0
    """Unlabelled pool rows measured (0: no pool)."""
    ce_val_acc: float | None = None
    """With a pool: the val accuracy of the same warm-up without the pool (CE only)."""
    verdict: str = ""
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        """One number for ranking regimes: FA's and LA's advantage of the true correspondence
        in standard deviations of the shuffled reference (higher: distillation more promising)."""
        return -self.z["fa_sinkhorn"] + self.z["la_acc"]


def _features(run: Run, x: Tensor) -> tuple[Tensor, Tensor]:
    student = run.student
    was = student.training
    student.eval()
    with torch.no_grad():
        z = torch.cat([student.features(x[i : i + 512]) for i in range(0, len(x), 512)])
        logits = student.head(z)
    student.train(was)
    return z, logits


def _bank_subset(data: RunData, per_class: int, seed: int) -> tuple[Tensor, Tensor]:
    rng = np.random.default_rng(seed)
    y = data.bank.y
    idx = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    )
    return torch.tensor(data.bank.z[idx]), torch.tensor(y[idx])


def warmup_config(
    data: RunData, *, epochs: int, steps_per_epoch: int, batch_size: int, lr: float, seed: int
) -> DistillConfig:
    """The warm-up: CE on the labels, or with a pool the teacher-free pool recipe (ssl, uniform
    prior, strong augmentation), so the student measured is the one pool terms start from."""
    common = dict(
        epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, lr=lr, seed=seed
    )
    if data.x_pool is None:
        return DistillConfig(algorithm="ce", **common)
    return DistillConfig(
        algorithm="ssl", prior="uniform", augment="strong", pool_batch=2 * batch_size, **common
    )


def diagnose(
    data: RunData,
    data_cfg: DataConfig | None = None,
    *,
    warmup_epochs: int = 10,
    steps_per_epoch: int = 20,
    batch_size: int = 32,
    lr: float = 3e-3,
    permutations: int = 20,
    bank_per_class: int = 100,
    eval_rows: int = 2000,
    pool_rows: int = 2000,
    seed: int = 0,
    log=print,
) -> Diagnosis:
    """Estimate feature and label alignment for ``data`` (see the module docstring)."""
    t0 = time.perf_counter()
    c = data.meta.num_classes
    cfg = warmup_config(
        data,
        epochs=warmup_epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )
    fresh = Run(cfg, data, data_cfg)
    run = Run(cfg, data, data_cfg)
    for _ in range(warmup_epochs):
        m = run.run_epoch()
    log(f"{cfg.algorithm} warm-up: {warmup_epochs} epochs, student val acc {m['val_acc']:.3f}")
    ce_val_acc = None
    if cfg.algorithm != "ce":  # what the pool alone gives: the same warm-up without it
        ce = Run(cfg.model_copy(update={"algorithm": "ce"}), data, data_cfg)
        for _ in range(warmup_epochs):
            m_ce = ce.run_epoch()
        ce_val_acc = float(m_ce["val_acc"])
        log(f"ce warm-up (no pool): student val acc {ce_val_acc:.3f}")

    x_val, y_val = data.x_val[:eval_rows], data.y_val[:eval_rows]
    x_pool = None if data.x_pool is None else data.x_pool[:pool_rows]
    z_t, y_t = _bank_subset(data, bank_per_class, seed)
    h_t = data.bank.head

    def measure(r: Run, perm: np.ndarray | None = None) -> dict[str, float]:
        z_fit, _ = _features(r, data.x_train)
        z_s, logits_s = _features(r, x_val)
        z_p, logits_p = (None, None) if x_pool is None else _features(r, x_pool)
        p = None if perm is None else torch.tensor(perm)
        y_teacher = y_t if p is None else p[y_t]
        return alignment(
            z_fit, data.y_train, z_s, y_val, logits_s, z_t, y_teacher, h_t, c,
            perm=p, z_pool=z_p, logits_pool=logits_p,
        )  # fmt: skip

    true = measure(run)
    rng = np.random.default_rng(seed + 1)
    # A shuffled correspondence moves every class (no fixed point): otherwise part of it is true.
    perms = []
    while len(perms) < permutations:
        p = rng.permutation(c)
        if (p != np.arange(c)).all():
            perms.append(p)
    shuffled = [measure(run, p) for p in perms]
    keys = list(true)
    mean = {k: float(np.mean([s[k] for s in shuffled])) for k in keys}
    std = {k: float(np.std([s[k] for s in shuffled], ddof=1)) for k in keys}
    z = {k: (true[k] - mean[k]) / max(std[k], 1e-12) for k in keys}

    between = float(
        losses.sinkhorn_divergence(z_t, z_t, y_s=y_t, y_t=(y_t + 1) % c, class_conditional=True)
    )
    head_acc = float((teacher_head_logits(h_t, z_t).argmax(-1) == y_t).float().mean())
    d = Diagnosis(
        benchmark=data.meta.name,
        student=data.student,
        teacher=data.teacher,
        labels_per_class=len(data.y_train) // c,
        num_classes=c,
        true=true,
        shuffled_mean=mean,
        shuffled_std=std,
        random_init=measure(fresh),
        teacher_between_class=between,
        teacher_head_acc=head_acc,
        student_val_acc=float(evaluate(run.student, h_t, x_val, y_val)["acc"]),
        z=z,
        warmup=cfg.algorithm,
        pool_rows=0 if x_pool is None else len(x_pool),
        ce_val_acc=ce_val_acc,
    )
    d.verdict, d.reasons = verdict(d)
    d.seconds = time.perf_counter() - t0
    return d


def verdict(d: Diagnosis) -> tuple[str, list[str]]:
    """'likely to help' / 'unclear' / 'unlikely to help', with the reasons in words."""
    fa_ok = d.z["fa_sinkhorn"] <= -Z_HELPS
    la_ok = d.z["la_acc"] >= Z_HELPS
    reasons = [
        f"feature alignment: the true class correspondence gives a class-conditional Sinkhorn "
        f"divergence of {d.true['fa_sinkhorn']:.4f} against {d.shuffled_mean['fa_sinkhorn']:.4f} "
        f"± {d.shuffled_std['fa_sinkhorn']:.4f} for shuffled ones (z = {d.z['fa_sinkhorn']:+.1f}; "
        f"{'aligned' if fa_ok else 'no better than chance'})",
        f"label alignment: the teacher head reads the mapped student features at "
        f"{100 * d.true['la_acc']:.1f}% accuracy against {100 * d.shuffled_mean['la_acc']:.1f}% "
        f"± {100 * d.shuffled_std['la_acc']:.1f} for shuffled correspondences (z = "
        f"{d.z['la_acc']:+.1f}; chance {100 / d.num_classes:.0f}%, teacher on its own features "
        f"{100 * d.teacher_head_acc:.1f}%)",
    ]
    if "pool_agree" in d.true:
        reasons.append(
            f"the pool: the teacher head's reading of the mapped pool rows agrees with the "
            f"student's own prediction on {100 * d.true['pool_agree']:.1f}% of {d.pool_rows} "
            f"rows against {100 * d.shuffled_mean['pool_agree']:.1f}% ± "
            f"{100 * d.shuffled_std['pool_agree']:.1f} for shuffled correspondences (z = "
            f"{d.z['pool_agree']:+.1f}); the pool alone, with no teacher, took the student's val "
            f"acc from {100 * d.ce_val_acc:.1f}% (CE) to {100 * d.student_val_acc:.1f}%"
        )
    if fa_ok and la_ok:
        return "likely to help", reasons
    if not fa_ok and not la_ok:
        return "unlikely to help", reasons
    return "unclear", reasons


def format_diagnosis(d: Diagnosis) -> str:
    rows = [
        ("FA: class-cond. Sinkhorn div. ↓", "fa_sinkhorn", 1, ".4f"),
        ("FA: class-cond. MMD² ↓", "fa_mmd", 1, ".4f"),
        ("LA: teacher-head acc. (%) ↑", "la_acc", 100, ".1f"),
        ("LA: KL(h_t reading ‖ h_s) ↓", "la_kl", 1, ".3f"),
        ("pool: h_t agrees with h_s (%) ↑", "pool_agree", 100, ".1f"),
    ]
    out = [
        f"benchmark {d.benchmark}: teacher {d.teacher} -> student {d.student}, "
        f"{d.labels_per_class} labels per class, {d.num_classes} classes; warm-up "
        + (
            "CE on the labels"
            if d.warmup == "ce"
            else f"{d.warmup} on the labels and {d.pool_rows} unlabelled pool rows (no teacher)"
        ),
        "",
        "| quantity | warmed-up student | shuffled classes (mean ± std) | z | random-init student |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, k, mul, fmt in (r for r in rows if r[1] in d.true):
        out.append(
            f"| {label} | {mul * d.true[k]:{fmt}} | {mul * d.shuffled_mean[k]:{fmt}} ± "
            f"{mul * d.shuffled_std[k]:{fmt}} | {d.z[k]:+.1f} | {mul * d.random_init[k]:{fmt}} |"
        )
    out += [
        "",
        f"scales: teacher between-class Sinkhorn divergence {d.teacher_between_class:.4f}; "
        f"teacher head on its own features {100 * d.teacher_head_acc:.1f}%; chance "
        f"{100 / d.num_classes:.1f}%; warmed-up student's own val acc {100 * d.student_val_acc:.1f}%",
        "",
        f"verdict: distillation {d.verdict} (score {d.score:+.1f})",
        *[f"  - {r}" for r in d.reasons],
        f"({d.seconds:.0f} s)",
    ]
    return "\n".join(out)


def check_args(argv=None) -> tuple[argparse.Namespace, DataConfig]:
    """Parse and validate the command line, building nothing: a bad value exits 2 (cmkd.cli)."""
    p = cli.parser("python -m cmkd.diagnose", __doc__)
    p.add_argument(
        "--benchmark", default="sonified", help=f"{', '.join(BUILTIN)}, or a built folder"
    )
    p.add_argument("--teacher", help="teacher modality (default: the benchmark's first)")
    p.add_argument("--student", help="student modality (default: the benchmark's second)")
    p.add_argument(
        "--labels-per-class",
        type=cli.labels_per_class,
        default=5,
        help="labelled student samples per class, or 'all'",
    )
    p.add_argument(
        "--unlabelled",
        type=cli.unlabelled,
        default="all",
        help="unlabelled pool rows the warm-up learns: a number, 'all' (default; none when the "
        "benchmark has no pool) or 0 (a CE warm-up on the labels only)",
    )
    p.add_argument(
        "--control",
        choices=TEACHER_CONTROLS,
        default="real",
        help="diagnose a control teacher instead: permuted (its class structure scrambled: "
        "should read 'unlikely') or neutral (evenly spaced class clusters)",
    )
    p.add_argument("--warmup-epochs", type=cli.positive_int, default=10)
    p.add_argument("--steps-per-epoch", type=cli.positive_int, default=20)
    p.add_argument(
        "--permutations", type=cli.positive_int, default=20, help="shuffled correspondences"
    )
    p.add_argument("--seed", type=cli.seed, default=0)
    p.add_argument("--data-root", default="data")
    p.add_argument("--json", help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    check_benchmark(args.benchmark, "--benchmark")
    if args.teacher is not None and args.teacher == args.student:
        cli.fail(f"--student {args.student!r}: expected a modality other than --teacher's")
    data_cfg = DataConfig(
        benchmark=args.benchmark,
        teacher=args.teacher,
        student=args.student,
        labels_per_class=args.labels_per_class,
        unlabelled=args.unlabelled,
        data_root=args.data_root,
    )
    return args, data_cfg


def main(argv=None) -> int:
    try:
        args, data_cfg = check_args(argv)
    except SystemExit as e:  # a bad argument, already said on stderr (or --help)
        return e.code
    try:
        data = load_run_data(data_cfg, args.seed)
    except (ConfigError, ValueError, FileNotFoundError) as e:  # what only the data can tell
        return cli.error(str(e))
    data = replace(data, bank=control_bank(data.bank, args.control, data.meta.num_classes))
    torch.manual_seed(args.seed)
    d = diagnose(
        data,
        data_cfg,
        warmup_epochs=args.warmup_epochs,
        steps_per_epoch=args.steps_per_epoch,
        permutations=args.permutations,
        seed=args.seed,
    )
    print(format_diagnosis(d))
    if args.json:
        Path(args.json).write_text(json.dumps({**asdict(d), "score": d.score}, indent=2))
        print(f"numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
