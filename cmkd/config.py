"""Typed, strict configuration of one distillation run, validated once at the edge.

A YAML file or a Tune trial's dict becomes a :class:`DistillConfig`; an unknown key or an
out-of-range value is a :class:`ConfigError` naming the key (and the file). Below this edge the
code sees plain keyword arguments (:meth:`DistillConfig.step_kwargs`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cmkd import methods


class ConfigError(ValueError):
    """A configuration problem; the message names the source, the key and what is expected."""


Algorithm = Literal[
    "ce", "kd_unpaired", "kd", "fa_only", "ucmkd_sum", "ucmkd_bilevel", "ucmkd_pool", "ssl"
]
POOL_ALGORITHMS = ("ucmkd_pool", "ssl")
"""The algorithms that train on the student modality's unlabelled pool."""
PAIR_TERM_ALGORITHMS = ("kd", "fa_only", "ucmkd_sum", "ucmkd_pool")
"""The algorithms that take the instance-level terms of the paired setting (w_kd, w_fm)."""


class DistillConfig(BaseModel):
    """Hyperparameters of one distillation run (a trial of a sweep, or a single run)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: Algorithm = "ucmkd_sum"
    """Training algorithm: ce (no distillation), kd_unpaired, fa_only, ucmkd_sum, ucmkd_bilevel;
    with an unlabelled pool, ucmkd_pool (the teacher's terms on the pool) and ssl (the same pool
    and pseudo-labels with no teacher: the control that tells the teacher's part from the
    pool's); with pairs (``pairing: paired``), kd: Hinton KD toward each row's partner (the
    labelled rows, and the pool's rows that have partners)."""
    pairing: Literal["class_matched", "paired"] = "class_matched"
    """Which teacher-bank row a student row meets: a random row of the same class
    (class_matched, the unpaired setting), or its own partner, the row with the same pair_id
    (paired: the benchmark must declare pairs; pool rows meet their partners too)."""
    w_kd: float = Field(0.0, ge=0.0, le=1e3)
    """Paired: weight of Hinton KD (temperature ``kd_temperature``) toward the partner's logits
    on every row that has a partner, labelled or pool (fa_only, ucmkd_sum, ucmkd_pool)."""
    w_fm: float = Field(0.0, ge=0.0, le=1e3)
    """Paired: weight of feature matching to the partner, ½‖n(z_s) − n(z_t)‖² with n the FA
    normalisation, on every row that has a partner (kd, fa_only, ucmkd_sum, ucmkd_pool)."""
    fa: Literal["sinkhorn", "mmd", "reference_ot"] = "sinkhorn"
    """Feature-alignment term."""
    la: Literal["teacher_ce", "kl", "prior", "kappa_reference"] = "teacher_ce"
    """Label-alignment term."""
    w_fa: float = Field(1.0, ge=0.0, le=1e3)
    """Weight of feature alignment (0 switches it off)."""
    w_la: float = Field(1.0, ge=0.0, le=1e3)
    """Weight of label alignment (0 switches it off)."""
    normalize: Literal["l2", "layernorm", "none"] = "l2"
    """Feature scaling before FA: raw feature norms make squared-Euclidean OT collapse."""
    epsilon: float = Field(0.1, gt=0.0, le=100.0)
    """Sinkhorn temperature ε in units of the cost ½‖x−y‖² (geomloss blur = sqrt(ε))."""
    scaling: float = Field(0.9, ge=0.8, lt=1.0)
    """geomloss ε-scaling ratio; below 0.8 the divergence can turn negative."""
    reach: float | None = Field(None, gt=0.0)
    """Unbalanced OT reach (None: balanced)."""
    refine: int = Field(10, ge=0, le=10_000)
    """Extra Sinkhorn iterations at the target ε after annealing."""
    mmd_multiplier: float = Field(1.0, gt=0.0, le=1e3)
    """MMD bandwidth multiplier of the detached median (or mean) pairwise squared distance."""
    mmd_kernels: int = Field(5, ge=1, le=16)
    """Number of Gaussian kernels in the MMD."""
    mmd_bandwidth: Literal["median", "mean"] = "median"
    """Base bandwidth statistic."""
    label_cost: float = Field(0.0, ge=0.0, le=1e3)
    """β added to the FA cost on a label mismatch (0: label-agnostic)."""
    class_conditional: bool = False
    """FA as the mean of per-class terms."""
    ot_reg: float = Field(0.1, gt=0.0, le=100.0)
    """Entropic regularisation of the reference OT (cosine cost)."""
    ot_iters: int = Field(100, ge=1, le=10_000)
    """Sinkhorn iterations of the reference OT."""
    la_temperature: float = Field(1.0, gt=0.0, le=100.0)
    """Temperature of the KL label alignment."""
    kd_temperature: float = Field(4.0, gt=0.0, le=100.0)
    """Hinton KD temperature T."""
    kd_alpha: float = Field(0.9, ge=0.0, le=1.0)
    """Hinton KD weight α on the soft term."""
    inner_lr: float = Field(3e-5, gt=0.0, lt=1.0)
    """Bilevel: learning rate of the look-ahead copy."""
    n1: int = Field(1, ge=0, le=100)
    """Bilevel: FA steps on the copy."""
    n2: int = Field(1, ge=0, le=100)
    """Bilevel: LA steps on the copy."""
    grad_clip: float | None = Field(5.0, gt=0.0)
    """Gradient-norm clip (None: off)."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """Student optimizer."""
    lr: float = Field(1e-3, gt=0.0, lt=10.0)
    """Student learning rate."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """The learning rate over the run: constant, or cosine decay from ``lr`` to 0 at the last
    step (the last epochs settle instead of wandering, so the best epoch is less of a draw)."""
    weight_decay: float = Field(1e-2, ge=0.0, lt=1.0)
    """Student weight decay."""
    batch_size: int = Field(64, ge=2, le=65_536)
    """Student samples per step (and per rank under DDP)."""
    epochs: int = Field(10, ge=1, le=10_000)
    """Epochs (validation, report and checkpoint after each)."""
    steps_per_epoch: int | None = Field(None, ge=1, le=1_000_000)
    """Batches per epoch (None: one pass over the student's labelled set)."""
    augment: Literal["none", "weak", "strong"] = "none"
    """Augmentation of the labelled student batches, for every algorithm (ce included), so that
    what augmentation alone gives is never credited to distillation (cmkd.augment)."""
    aug_magnitude: float = Field(1.0, gt=0.0, le=4.0)
    """Scale of every augmentation (shift, masks, noise); the pool's views use it too."""
    pool_batch: int = Field(128, ge=2, le=65_536)
    """Unlabelled pool rows per step (pool algorithms)."""
    w_uot: float = Field(1.0, ge=0.0, le=1e3)
    """ucmkd_pool: weight of the label-agnostic unbalanced OT between the pool's features and a
    sample of the teacher bank (0 switches it off)."""
    uot_epsilon: float = Field(0.05, gt=0.0, le=10.0)
    """Entropic regularisation of that OT (cost ½‖x−y‖² on unit-norm features)."""
    uot_tau: float = Field(1.0, gt=0.0, le=1e4)
    """KL relaxation of its marginals (small: unbalanced, large: balanced)."""
    uot_joint: float = Field(0.0, ge=0.0, le=100.0)
    """Weight of the joint cost: the student head's prediction on a pool row against the bank
    row's label (0: features only)."""
    w_pl: float = Field(1.0, ge=0.0, le=1e3)
    """Weight of the pseudo-label loss on the pool (strong view against the weak view's label)."""
    pl_source: Literal["student", "teacher_head", "plan", "teacher_plan"] = "student"
    """Where pool pseudo-labels come from: the student's own head (ssl always), the teacher
    head on the student's features h_t(z_s), the OT plan's class mass, or the mean of those two."""
    pl_threshold: float = Field(0.9, ge=0.0, le=1.0)
    """Confidence a pseudo-label needs."""
    pl_rampup: float = Field(0.2, ge=0.0, le=1.0)
    """Share of training over which the pool terms ramp up linearly from 0."""
    w_prior: float = Field(1.0, ge=0.0, le=1e3)
    """Weight of class-prior matching of the pool's mean prediction (stops self-training from
    collapsing onto a few classes)."""
    prior: Literal["uniform", "bank"] = "uniform"
    """The class prior the pool is aligned to: uniform (class balance), or the teacher bank's
    class histogram (what a teacher gives through its class proportions alone)."""
    teacher: Literal["real", "permuted", "neutral"] = "real"
    """Controls: the real teacher bank, one whose labels are permuted (its class structure
    scrambled), or a neutral one (random, evenly spaced class clusters with the bank's labels)."""
    readout: Literal["student", "teacher", "best"] = "student"
    """Which head the run is scored by (``val_acc``, ``test_acc``): the student's own, the frozen
    teacher head on the student's features (h_t ∘ g_s, a valid predictor once the features are
    aligned), or whichever reads validation better at each epoch (test read the same way)."""
    student_width: int | None = Field(None, ge=1, le=4096)
    """Student encoder width: the MLP's hidden units or the CNN's first channels (None: the
    default student, ``cmkd.train.STUDENT_ENCODER``). Searched beside the alignment terms in a
    two-objective sweep (accuracy against size)."""
    student_depth: int | None = Field(None, ge=1, le=8)
    """Student encoder depth: the MLP's linear layers or the CNN's conv blocks (None: the
    default, 2 for either)."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Random seed of the run."""

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], source: str = "config", prefix: str = "", across: bool = True
    ) -> DistillConfig:
        """Validate a dict; errors name ``source`` and every offending key. ``across``: also
        the checks across keys (:meth:`check_pairing`)."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"{source}: expected a mapping of keys to values, got {type(data).__name__}"
            )
        try:
            cfg = cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(_describe(e, source, prefix)) from None
        if across:
            cfg.check_pairing(source)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> DistillConfig:
        """Read and validate a YAML file."""
        return cls.from_dict(_read_yaml(path), source=str(path))

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(), sort_keys=False))

    def fa_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the chosen feature-alignment term."""
        if self.fa == "reference_ot":
            return {"reg": self.ot_reg, "num_iter": self.ot_iters}
        shared = {
            "label_cost": self.label_cost,
            "class_conditional": self.class_conditional,
            "normalize_mode": self.normalize,
        }
        if self.fa == "sinkhorn":
            return {
                "epsilon": self.epsilon,
                "scaling": self.scaling,
                "reach": self.reach,
                "refine": self.refine,
                **shared,
            }
        return {
            "multiplier": self.mmd_multiplier,
            "num_kernels": self.mmd_kernels,
            "bandwidth": self.mmd_bandwidth,
            **shared,
        }

    def la_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the chosen label-alignment term."""
        return {"temperature": self.la_temperature} if self.la == "kl" else {}

    def step_kwargs(self) -> dict[str, Any]:
        """Flat keyword arguments for :func:`cmkd.methods.make_step`."""
        return {
            "fa": methods.make_fa(self.fa, **self.fa_kwargs()),
            "la": methods.make_la(self.la, **self.la_kwargs()),
            "w_fa": self.w_fa,
            "w_la": self.w_la,
            "grad_clip": self.grad_clip,
            "kd_temperature": self.kd_temperature,
            "kd_alpha": self.kd_alpha,
            "inner_lr": self.inner_lr,
            "n1": self.n1,
            "n2": self.n2,
            "w_uot": self.w_uot,
            "uot": {"epsilon": self.uot_epsilon, "tau": self.uot_tau, "joint": self.uot_joint},
            "w_pl": self.w_pl,
            "pl_source": self.pl_source,
            "pl_threshold": self.pl_threshold,
            "w_prior": self.w_prior,
            "w_kd": self.w_kd,
            "w_fm": self.w_fm,
            "normalize_mode": self.normalize,
        }

    def check_pairing(self, source: str = "config") -> None:
        """The paired setting's keys agree with each other (what the data must declare is
        checked against the data: cmkd.train.check_pairing)."""
        if self.pairing == "paired":
            if (self.w_kd > 0 or self.w_fm > 0) and self.algorithm not in PAIR_TERM_ALGORITHMS:
                raise ConfigError(
                    f"{source}: key 'distill.w_kd'/'distill.w_fm': algorithm "
                    f"{self.algorithm!r} takes no instance-level terms; they apply to "
                    f"{', '.join(PAIR_TERM_ALGORITHMS)}"
                )
            return
        if self.algorithm == "kd":
            raise ConfigError(
                f"{source}: key 'distill.algorithm': 'kd' distils each row's partner and needs "
                "'distill.pairing: paired'; class-matched KD is 'kd_unpaired'"
            )
        for key in ("w_kd", "w_fm"):
            if getattr(self, key) > 0:
                raise ConfigError(
                    f"{source}: key 'distill.{key}' ({getattr(self, key)}) is an instance-level "
                    "term: it needs 'distill.pairing: paired' (a class-matched row is not the "
                    "same instance); set it to 0 or pair"
                )


ENCODER_NAMES = ("auto", "mlp", "cnn")
"""Encoders named by a plain string in ``data.encoder``; a pretrained one is a mapping."""


class HFEncoderSpec(BaseModel):
    """A pretrained ``transformers`` encoder read from a local folder (never the hub).

    It reads rows shaped as sequences (T, F) or spectrograms (1, F, T): each frame is mapped by
    a linear layer to the model's hidden size and fed as ``inputs_embeds``; the outputs are
    mean-pooled over time.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hf"]
    """Always ``hf``."""
    path: str
    """The model's folder, as written by ``save_pretrained`` (config.json and the weights); made
    absolute when read, since trials run in other working directories. On a cluster, a folder
    every node can read."""
    project: bool = True
    """Map the pooled hidden state (hidden_size) linearly to the feature size. False: the
    features are the pooled hidden states themselves, so hidden_size must equal the feature
    size (the teacher bank's feature_dim for a student)."""
    finetune: bool = True
    """Train the pretrained weights too. False: they stay frozen (and in eval mode); only the
    input map, the projection and the heads learn."""


def _sub(key: str, field: str) -> str:
    """The name of a field inside a setting: data.encoder.path, or --encoder path."""
    return f"{key}.{field}" if not key.startswith("-") else f"{key} {field}"


def parse_encoder(value: Any, key: str = "data.encoder") -> str | HFEncoderSpec:
    """An encoder setting: a name of :data:`ENCODER_NAMES`, or a mapping {kind: hf, path: DIR,
    project: true, finetune: true}. A problem is a ConfigError naming ``key`` (and its field)."""
    expected = (
        f"expected one of {', '.join(ENCODER_NAMES)}, or a mapping {{kind: hf, path: DIR}} for "
        "a pretrained transformers model saved in folder DIR"
    )
    if isinstance(value, HFEncoderSpec) or (isinstance(value, str) and value in ENCODER_NAMES):
        return value
    if isinstance(value, str):
        hint = " (a transformers encoder needs its folder)" if value == "hf" else ""
        raise ConfigError(f"{key} {value!r}: not an encoder{hint}; {expected}")
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: got {value!r}; {expected}")
    fields = list(HFEncoderSpec.model_fields)
    for name in value:
        if name not in fields:
            near = difflib.get_close_matches(str(name), fields, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"{key}: unknown key '{name}'{hint}; expected some of {fields}")
    if value.get("kind") != "hf":
        raise ConfigError(
            f"{_sub(key, 'kind')}: got {value.get('kind')!r}; a mapping describes a pretrained "
            f"encoder, kind: hf (the others are plain names: {', '.join(ENCODER_NAMES)})"
        )
    path = value.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(
            f"{_sub(key, 'path')}: got {path!r}; expected the local folder of a transformers "
            "model (written by save_pretrained, holding config.json)"
        )
    try:
        spec = HFEncoderSpec.model_validate(value)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(
            f"{_sub(key, str(err['loc'][0]))}: {err['msg']} (got {err.get('input')!r})"
        ) from None
    return spec.model_copy(update={"path": str(Path(path).expanduser().absolute())})


def encoder_arg(text: str) -> str | HFEncoderSpec:
    """An argparse ``type=`` for ``--encoder``: a name, or a YAML mapping {kind: hf, path: DIR}."""
    import argparse

    try:
        return parse_encoder(yaml.safe_load(text), "--encoder")
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(
            f"got {text!r}, expected auto, mlp, cnn or a YAML mapping '{{kind: hf, path: DIR}}'"
        ) from None
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


VAL_PER_CLASS = 10
"""Default validation rows per class: twice the default label budget, so that selection sees
about 100 rows on 10 classes (about ±5 points of sampling error at 50% accuracy)."""


class DataConfig(BaseModel):
    """Which data a run distils on: benchmark, modalities, label budget, student encoder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    benchmark: str = "synth"
    """A built-in benchmark (synth, synth-nohelp, avdigits) or the path of a built one."""
    student: str | None = None
    """Student modality (default: the benchmark's second modality)."""
    teacher: str | None = None
    """Teacher modality (default: the benchmark's first modality)."""
    labels_per_class: Annotated[int, Field(ge=1)] | Literal["all"] = 5
    """Labelled student samples per class (low-label regime), or all."""
    val_per_class: Annotated[int, Field(ge=1)] | Literal["split"] = VAL_PER_CLASS
    """Validation rows per class drawn from the student's labelled train rows, disjoint from the
    training labels (a few-label user has no large validation set), or ``split``: the
    benchmark's own validation table."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seed of the labelled subset and of the validation draw (not of training)."""
    encoder: Literal["auto", "mlp", "cnn"] | HFEncoderSpec = "auto"
    """Student encoder: auto picks a CNN for (C, H, W) inputs and an MLP for vectors; or a
    pretrained transformers model, {kind: hf, path: DIR} (:class:`HFEncoderSpec`), for
    sequences (T, F) and spectrograms (1, F, T)."""
    feature_dim: int | None = Field(None, ge=2, le=65_536)
    """Student feature size before the projection (default: the teacher's)."""
    data_root: str = "data"
    """Folder where built-in benchmarks and teacher banks are built and cached."""
    loading: Literal["auto", "memory", "stream"] = "auto"
    """Labelled student rows held in memory, or streamed from parquet each epoch; auto decides
    by their size (``stream_above_mb``)."""
    unlabelled: Annotated[int, Field(ge=0)] | Literal["all"] = "all"
    """Rows of the student modality's unlabelled pool ({student}_unlabelled.parquet) a pool
    algorithm may use: all of them, at most N (a uniform draw), or 0 (none). A number asks for
    the file: it is an error if the benchmark has none."""
    stream_above_mb: float = Field(1024.0, gt=0)
    """With loading auto: stream when the labelled rows' features exceed this many MiB."""

    @field_validator("encoder", mode="before")
    @classmethod
    def _encoder(cls, value: Any) -> Any:
        return parse_encoder(value)

    @classmethod
    def model_validate_strict(cls, data: Any, source: str) -> DataConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(_describe(e, source, "data.")) from None


class Experiment(BaseModel):
    """A runnable experiment file: ``data:`` and ``distill:`` sections (``python -m cmkd.train``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: DataConfig = DataConfig()
    distill: DistillConfig = DistillConfig()

    @classmethod
    def from_dict(cls, raw: Any, source: str = "experiment") -> Experiment:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping with 'data' and 'distill' sections")
        unknown = sorted(set(raw) - {"data", "distill"})
        if unknown:
            raise ConfigError(
                f"{source}: unknown section(s) {unknown}; expected 'data' and 'distill'"
            )
        return cls(
            data=DataConfig.model_validate_strict(raw.get("data") or {}, source),
            distill=DistillConfig.from_dict(raw.get("distill") or {}, source, "distill."),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> Experiment:
        return cls.from_dict(_read_yaml(path), source=str(path))

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(), sort_keys=False))


def _read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def _describe(error: ValidationError, source: str, prefix: str = "") -> str:
    """One line per offending key (a union type's alternatives folded into one line)."""
    by_key: dict[str, list[dict]] = {}
    for err in error.errors():
        key = prefix + str(err["loc"][0]) if err["loc"] else "(top level)"
        by_key.setdefault(key, []).append(err)
    lines = []
    for key, errs in by_key.items():
        if errs[0]["type"] == "extra_forbidden":
            fields = DataConfig.model_fields if prefix == "data." else DistillConfig.model_fields
            near = difflib.get_close_matches(key.removeprefix(prefix), fields, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            lines.append(f"{source}: unknown key '{key}'{hint}")
        elif isinstance(errs[0].get("ctx", {}).get("error"), ConfigError):
            lines.append(f"{source}: {errs[0]['ctx']['error']}")  # it names its key already
        else:
            msg = " or ".join(dict.fromkeys(e["msg"] for e in errs))
            lines.append(f"{source}: key '{key}': {msg} (got {errs[0].get('input')!r})")
    return "\n".join(lines)
