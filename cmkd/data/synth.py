"""The `synth` benchmarks: two views of Gaussian class codes, after the modality focusing
hypothesis (Xue et al., "The Modality Focusing Hypothesis: Towards Understanding Crossmodal
Knowledge Distillation", ICLR 2023).

Each class c has a code in three parts: modality-general decisive dims mu_g[c] (shared by both
modalities), and for each modality m its own modality-specific decisive dims mu_m[c]. A sample of
modality m with label y is

    z = [mu_g[y] + noise * e_g,  mu_m[y] + noise * e_m,  e_n]   (shared + specific + nondecisive,)
    x = z @ W_m + obs_noise * e_x                                (dim,)

with e_* standard normal, e_n the non-decisive dims (no label information) and W_m a random
linear embedding drawn once per modality. The modalities `a` and `b` share the label set but no
instances. Knowledge distilled from a teacher on one modality can only help the student on the
other through the shared dims: `synth` puts most decisive dims there, `synth-nohelp` none.
Both regimes have the same number of decisive dims per modality, so each modality alone is as
hard in one regime as in the other; only what the two have in common changes.

Each modality also gets an unlabelled pool ({a,b}_unlabelled.parquet): further balanced draws of
the same generator, the labels not written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from cmkd.data.schema import (
    POOL,
    SPLITS,
    Meta,
    pool_path,
    read_meta,
    split_path,
    write_meta,
    write_pool,
    write_split,
)

MODALITIES: tuple[str, ...] = ("a", "b")


@dataclass(frozen=True)
class SynthParams:
    """Knobs of the two-view Gaussian generator."""

    num_classes: int = 10
    """Number of classes, shared by both modalities."""
    dim: int = 64
    """Observed features per modality: x has shape (dim,)."""
    shared: int = 8
    """Modality-general decisive latent dims: the same class code in both modalities."""
    specific: int = 2
    """Modality-specific decisive latent dims, per modality (independent codes)."""
    nondecisive: int = 16
    """Latent dims per modality that carry no label information."""
    class_sep: float = 1.0
    """Standard deviation of the class codes in every decisive dim."""
    noise: float = 1.0
    """Within-class standard deviation of the decisive latents."""
    obs_noise: float = 0.1
    """Standard deviation of the noise added to the observed features."""
    train_per_class: int = 200
    """Samples per class and modality in the train split."""
    val_per_class: int = 50
    """Samples per class and modality in the val split."""
    test_per_class: int = 100
    """Samples per class and modality in the test split."""
    pool_per_class: int | None = None
    """Samples per class and modality in the unlabelled pool (labels not written); None: as
    many as train_per_class, 0: no pool."""

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, found {self.num_classes}")
        if self.shared < 0 or self.specific < 0 or self.nondecisive < 0:
            raise ValueError("shared, specific and nondecisive must be >= 0")
        if self.shared + self.specific == 0:
            raise ValueError("shared + specific must be >= 1: no dim would carry the label")
        if self.shared + self.specific + self.nondecisive > self.dim:
            raise ValueError(
                f"dim={self.dim} must be >= shared + specific + nondecisive "
                f"= {self.shared + self.specific + self.nondecisive}, or the embedding loses it"
            )
        if min(self.train_per_class, self.val_per_class, self.test_per_class) < 1:
            raise ValueError("every split needs at least one sample per class")
        if self.pool_per_class is not None and self.pool_per_class < 0:
            raise ValueError(f"pool_per_class must be >= 0 or None, found {self.pool_per_class}")
        if self.class_sep <= 0 or self.noise < 0 or self.obs_noise < 0:
            raise ValueError("class_sep must be > 0, noise and obs_noise >= 0")

    def per_class(self, split: str) -> int:
        if split == POOL:
            return self.train_per_class if self.pool_per_class is None else self.pool_per_class
        return {"train": self.train_per_class, "val": self.val_per_class}.get(
            split, self.test_per_class
        )


REGIMES: dict[str, SynthParams] = {
    # The teacher's decisive information is mostly modality-general: distillation can help.
    "synth": SynthParams(shared=8, specific=2),
    # No shared decisive dims: what decides the teacher's class is invisible to the student.
    "synth-nohelp": SynthParams(shared=0, specific=10),
}


def sample_synth(
    params: SynthParams, seed: int, splits: tuple[str, ...] = SPLITS
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Draw the splits (of SPLITS, and POOL: the unlabelled pool) of both modalities in memory.

    Returns {(modality, split): (x, y)} with x: (N, dim) float32 and y: (N,) int64, N =
    num_classes * per-class count of the split, rows shuffled; the pool's y is what its rows
    were drawn with (not written to disk). Deterministic by seed; the class codes and embeddings
    do not depend on the per-split counts, and every split has its own random stream, so
    drawing the pool leaves the labelled splits unchanged.
    """
    p = params
    rng = np.random.default_rng([seed, 0])
    mu_g = rng.normal(0.0, p.class_sep, (p.num_classes, p.shared))
    latent = p.shared + p.specific + p.nondecisive
    mu, w = {}, {}
    for m in MODALITIES:
        mu[m] = rng.normal(0.0, p.class_sep, (p.num_classes, p.specific))
        # Scaled so that each observed feature has about the variance of one latent dim.
        w[m] = rng.normal(0.0, 1.0 / np.sqrt(latent), (latent, p.dim))

    out = {}
    for s in splits:
        i = (*SPLITS, POOL).index(s)
        for j, m in enumerate(MODALITIES):
            # One stream per (split, modality): changing the test size leaves train unchanged.
            r = np.random.default_rng([seed, 1, i, j])
            y = r.permutation(np.repeat(np.arange(p.num_classes), p.per_class(s)))
            z = np.concatenate(
                [
                    mu_g[y] + p.noise * r.standard_normal((len(y), p.shared)),
                    mu[m][y] + p.noise * r.standard_normal((len(y), p.specific)),
                    r.standard_normal((len(y), p.nondecisive)),
                ],
                axis=1,
            )  # (N, latent)
            x = z @ w[m] + p.obs_noise * r.standard_normal((len(y), p.dim))  # (N, dim)
            out[m, s] = (x.astype(np.float32), y.astype(np.int64))
    return out


def build_synth(
    out: str | Path, regime: str = "synth", seed: int = 0, progress: bool = False, **overrides
) -> Meta:
    """Write a synth benchmark to out/: meta.json, {a,b}_{train,val,test}.parquet and, unless
    pool_per_class is 0, the unlabelled pools {a,b}_unlabelled.parquet (disjoint draws).

    regime names the defaults (a key of REGIMES); overrides replace single SynthParams fields
    and are recorded in meta.json as params["options"].
    """
    from tqdm import tqdm

    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose from {sorted(REGIMES)}")
    params = replace(REGIMES[regime], **overrides)
    splits = SPLITS + ((POOL,) if params.per_class(POOL) > 0 else ())
    data = sample_synth(params, seed, splits)
    for (m, s), (x, y) in tqdm(data.items(), desc=regime, unit="file", disable=not progress):
        ids = [f"{m}-{s}-{i:06d}" for i in range(len(y))]
        if s == POOL:
            write_pool(pool_path(out, m), x, ids)
        else:
            write_split(split_path(out, m, s), x, y, ids)
    # meta.json last: its presence marks a complete build.
    write_meta(
        out,
        regime,
        params.num_classes,
        {m: (params.dim,) for m in MODALITIES},
        seed=seed,
        params={"regime": regime, **asdict(params), "options": overrides},
    )
    return read_meta(out)
