"""Train the teacher on its own modality, then write its bank (features and logits, once).

    python -m cmkd.teacher --benchmark data/avdigits --modality image --out data/avdigits/teacher-image
    python -m cmkd.teacher ... --engine ray [--gpu]     # the bank through Ray Data map_batches
    python -m cmkd.teacher ... --encoder '{kind: hf, path: models/my-bert}'   # a pretrained one

The teacher is selected by best validation accuracy and frozen; only its head ships with the bank.
Its encoder is a CNN for (C, H, W) rows and an MLP for vectors, or, with ``--encoder {kind: hf,
path: DIR}``, a pretrained ``transformers`` model read from a local folder (sequences (T, F) and
spectrograms (1, F, T)): fine-tuned with its head by default, or frozen (``finetune: false``:
only its input map, projection and head learn). Write the bank to ``BENCHMARK/teacher-MODALITY``
and every run and sweep on that benchmark reads it.
With ``--engine ray`` the bank rows are computed by Ray Data actors that read the split's parquet
file and load the teacher once each (on a GPU with ``--gpu``); the default runs it in process.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from cmkd import cli
from cmkd.bank import write_bank
from cmkd.config import ConfigError, HFEncoderSpec, encoder_arg, parse_encoder
from cmkd.data import POOL, load_split, split_path, validate_benchmark
from cmkd.models import build_encoder, hf_config, hf_in_dim, hf_takes_embeddings, linear_head

TEACHER_FILE = "teacher.pt"
ENGINES = ("local", "ray")
# Teacher architecture per encoder kind. Three conv blocks, not two: with two, global pooling
# sees 7x7 patches and the avdigits teachers stopped at 90% (images) and 42% (audio).
ARCHITECTURE: dict[str, dict] = {"cnn": {"width": 32, "blocks": 3}, "mlp": {}}


def default_encoder(in_shape: tuple[int, ...]) -> str:
    """A CNN for (C, H, W) inputs (images, log-mel), an MLP for vectors."""
    return "cnn" if len(in_shape) == 3 else "mlp"


def resolve_encoder(
    encoder: str | HFEncoderSpec,
    in_shape: tuple[int, ...],
    *,
    modality: str,
    feature_dim: int | None,
    target_dim: int | None = None,
    target: str = "",
    key: str = "data.encoder",
    feature_key: str = "data.feature_dim",
    default_dim: int = 64,
) -> tuple[str, dict, int]:
    """The encoder a setting asks for, checked against the rows it will read before anything
    trains: (kind, its builder's keyword arguments, its feature size).

    ``feature_dim``: the size asked for (None: ``target_dim``, else ``default_dim``);
    ``target_dim``: the size the features must end up with (a student's: the teacher bank's,
    described by ``target``). A pretrained encoder's folder, the shape of ``modality``'s rows
    and, without a projection, its hidden size are checked here; each problem is a ConfigError
    naming ``key`` (or ``feature_key``) and what is expected.
    """
    if not isinstance(encoder, HFEncoderSpec):
        kind = default_encoder(in_shape) if encoder == "auto" else encoder
        return kind, {}, feature_dim or target_dim or default_dim
    sub = key + (" " if key.startswith("-") else ".")
    shape = tuple(in_shape)
    if hf_in_dim(shape) is None:
        raise ConfigError(
            f"{key}: a transformers encoder reads sequences (T, F) or spectrograms (1, F, T), "
            f"but the {modality!r} modality's rows have shape {shape}; use auto, mlp or cnn "
            "for that modality"
        )
    try:
        config = hf_config(encoder.path)
    except FileNotFoundError as err:
        raise ConfigError(
            f"{sub}path {encoder.path!r}: {err}; expected the local folder of a transformers "
            "model written by save_pretrained (nothing is downloaded)"
        ) from None
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{sub}path {encoder.path!r}: its config.json cannot be read as a transformers "
            f"config ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    hidden = getattr(config, "hidden_size", None)
    if not isinstance(hidden, int):
        raise ConfigError(
            f"{sub}path {encoder.path!r}: config.json gives no hidden_size; expected an encoder "
            "model whose hidden states the features are pooled from"
        )
    if hf_takes_embeddings(config) is False:
        raise ConfigError(
            f"{sub}path {encoder.path!r}: its model type {config.model_type!r} takes no "
            "inputs_embeds, and rows of features reach the model only that way; expected an "
            "encoder that takes them (BERT-like: bert, roberta, distilbert, ...)"
        )
    frames = shape[0] if len(shape) == 2 else shape[-1]
    longest = getattr(config, "max_position_embeddings", None)
    if isinstance(longest, int) and frames > longest:
        raise ConfigError(
            f"{key}: the {modality!r} modality's rows {shape} have {frames} frames, but the "
            f"model in {encoder.path} reads at most max_position_embeddings={longest}"
        )
    if encoder.project:
        return "hf", encoder.model_dump(exclude={"kind"}), feature_dim or target_dim or default_dim
    if feature_dim is not None and feature_dim != hidden:
        raise ConfigError(
            f"{feature_key} {feature_dim} contradicts {sub}project false: the features are then "
            f"the model's pooled hidden states, hidden_size {hidden} ({encoder.path}/config.json); "
            f"leave {feature_key} unset, set it to {hidden}, or set {sub}project true"
        )
    if target_dim is not None and target_dim != hidden:
        raise ConfigError(
            f"{sub}project false: the features would be the pooled hidden states of "
            f"{encoder.path} (hidden_size {hidden}), but {target} has features of size "
            f"{target_dim} and the teacher head reads them without any map; set {sub}project "
            f"true (a linear map {hidden} -> {target_dim}), or use a bank of {hidden}-wide features"
        )
    return "hf", encoder.model_dump(exclude={"kind"}), hidden


def benchmark_fingerprint(directory: str | Path) -> str:
    """Identifies a built benchmark: meta.json and the size of every labelled table. Banks carry
    it. Unlabelled pools are left out: a teacher never reads one, so adding or capping a pool
    keeps the bank."""
    directory = Path(directory)
    h = hashlib.sha256((directory / "meta.json").read_bytes())
    for f in sorted(directory.glob("*.parquet")):
        if f.name.endswith(f"_{POOL}.parquet"):
            continue
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def saved_spec(spec: dict) -> dict:
    """The spec teacher.pt keeps: a pretrained encoder's folder is replaced by the model's
    config (its weights are in the checkpoint), so that loading the teacher, in a Ray Data
    actor on any node, needs teacher.pt alone. The folder stays as ``pretrained``."""
    kwargs = dict(spec["encoder_kwargs"])
    if spec["encoder"] != "hf" or "path" not in kwargs:
        return spec
    path = kwargs.pop("path")
    return {
        **spec,
        "encoder_kwargs": {**kwargs, "config": hf_config(path).to_dict()},
        "pretrained": path,
    }


def build_teacher(spec: dict) -> nn.Sequential:
    """Encoder + linear head from a teacher spec (the ``spec`` saved in teacher.pt)."""
    encoder = build_encoder(
        spec["encoder"],
        tuple(spec["in_shape"]),
        feature_dim=spec["feature_dim"],
        **spec.get("encoder_kwargs", {}),
    )
    return nn.Sequential(encoder, linear_head(spec["feature_dim"], spec["num_classes"]))


def load_teacher(checkpoint: str | Path | dict) -> tuple[nn.Module, nn.Linear, dict]:
    """(encoder, head, spec) of a saved teacher, in eval mode. checkpoint: teacher.pt or its dict."""
    if not isinstance(checkpoint, dict):
        try:
            checkpoint = torch.load(checkpoint, weights_only=True, map_location="cpu")
        except Exception as err:
            raise ValueError(
                f"{checkpoint}: cannot be read as a teacher checkpoint ({type(err).__name__}); "
                "retrain it with `python -m cmkd.teacher`"
            ) from err
    model = build_teacher(checkpoint["spec"])
    model.load_state_dict(checkpoint["state"])
    model.eval()
    return model[0], model[1], checkpoint["spec"]


def _batches(n: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = sum(
        (model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum().item()
        for i in range(0, len(x), batch_size)
    )
    model.train()
    return correct / max(len(x), 1)


@torch.no_grad()
def encode(encoder: nn.Module, head: nn.Module, x: np.ndarray, batch_size: int = 512):
    """Teacher features and logits of x: (N, *shape) -> (N, D), (N, C) float32 arrays."""
    encoder.eval()
    zs, logits = [], []
    for i in range(0, len(x), batch_size):
        z = encoder(torch.tensor(x[i : i + batch_size]))  # a copy: parquet arrays are read-only
        zs.append(z.numpy())
        logits.append(head(z).numpy())
    return np.concatenate(zs), np.concatenate(logits)


class TeacherEncoder:
    """Ray Data ``map_batches`` callable: loads the teacher once per actor, encodes batches.

    A batch is a pyarrow table with ``id`` and ``x`` (the split's fixed-size list column); the
    result holds ``id``, ``z`` (B, D) and ``logits`` (B, C) float32.
    """

    def __init__(self, teacher_file: str, use_gpu: bool = False, threads: int = 1):
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        encoder, head, spec = load_teacher(teacher_file)
        self.encoder, self.head = encoder.to(self.device), head.to(self.device)
        self.in_shape = tuple(spec["in_shape"])

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        x = batch.column("x").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        x = torch.tensor(x.reshape(-1, *self.in_shape), device=self.device)  # (B, *in_shape)
        z = self.encoder(x)  # (B, D)
        return {
            "id": np.asarray(batch.column("id").to_pylist(), dtype=object),
            "z": z.cpu().numpy(),
            "logits": self.head(z).cpu().numpy(),
        }


def encode_ray(
    teacher_file: str | Path,
    split_file: str | Path,
    *,
    batch_size: int = 512,
    concurrency: int = 1,
    num_cpus: float = 1.0,
    use_gpu: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher features and logits of a split file through Ray Data: the same arrays as
    :func:`encode` on that split's x, in the file's row order. -> (N, D), (N, C) float32.

    ``read_parquet`` streams the split to ``concurrency`` actors, each loading teacher.pt once
    (``num_gpus=1`` each with ``use_gpu``, else ``num_cpus`` each, and as many torch threads).
    Both files must be readable from every node (a shared or cloud path on a cluster). Starts
    a local Ray instance when none is running. On a machine with few CPUs leave one CPU free
    for the read tasks: actors holding every CPU leave the reads unscheduled, and it hangs.
    """
    import ray

    if not ray.is_initialized():
        ray.init(logging_level="ERROR", log_to_driver=False)
    resources = {"num_gpus": 1} if use_gpu else {"num_cpus": num_cpus}
    ctx = ray.data.DataContext.get_current()
    progress, ctx.enable_progress_bars = ctx.enable_progress_bars, False
    try:
        ds = ray.data.read_parquet(str(split_file)).select_columns(["id", "x"])
        if concurrency > 1:  # a split is one file and one block: cut it so every actor gets work
            ds = ds.repartition(target_num_rows_per_block=batch_size)
        ds = ds.map_batches(
            TeacherEncoder,
            fn_constructor_kwargs={
                "teacher_file": str(teacher_file),
                "use_gpu": use_gpu,
                "threads": max(1, int(num_cpus)),
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=concurrency),
            **resources,
        )
        parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    finally:
        ctx.enable_progress_bars = progress
    ids = np.concatenate([p["id"] for p in parts]).astype(str)
    z = np.concatenate([p["z"] for p in parts]).astype(np.float32, copy=False)
    logits = np.concatenate([p["logits"] for p in parts]).astype(np.float32, copy=False)
    # Actors finish blocks in any order: put the rows back in the file's order, by id.
    file_ids = np.asarray(pq.read_table(split_file, columns=["id"]).column("id").to_pylist())
    by_id = np.argsort(ids)
    rows = by_id[np.searchsorted(ids, file_ids, sorter=by_id).clip(max=len(ids) - 1)]
    if len(ids) != len(file_ids) or not np.array_equal(ids[rows], file_ids):
        raise RuntimeError(
            f"{split_file}: Ray Data returned {len(ids)} rows that do not match its "
            f"{len(file_ids)} ids"
        )
    return z[rows], logits[rows]


def train_teacher(
    benchmark: str | Path,
    modality: str,
    out: str | Path,
    *,
    encoder: str | HFEncoderSpec = "auto",
    feature_dim: int | None = None,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    engine: str = "local",
    use_gpu: bool = False,
    log=print,
) -> dict:
    """Train encoder + linear head on ``modality``'s train split; write the teacher and its bank.

    ``encoder``: auto (CNN or MLP by shape), mlp, cnn or a pretrained :class:`HFEncoderSpec`,
    checked (:func:`resolve_encoder`) before any split is read; ``feature_dim``: the bank's
    feature size (default 64, or the model's hidden size for a pretrained encoder without
    projection).
    The bank is computed in process (``engine="local"``) or through Ray Data (``"ray"``, on GPU
    actors with ``use_gpu``; see :func:`encode_ray`). Returns the teacher's validation and test
    accuracy and the timings.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {list(ENGINES)}")
    torch.manual_seed(seed)
    meta = validate_benchmark(benchmark, [modality])
    shape = meta.shapes[modality]
    kind, kwargs, feature_dim = resolve_encoder(
        parse_encoder(encoder, "--encoder"),
        tuple(shape),
        modality=modality,
        feature_dim=feature_dim,
        key="--encoder",
        feature_key="--feature-dim",
    )
    train, val, test = (load_split(benchmark, modality, s, meta) for s in ("train", "val", "test"))
    spec = {
        "encoder": kind,
        "encoder_kwargs": {**ARCHITECTURE.get(kind, {}), **kwargs},
        "in_shape": list(shape),
        "feature_dim": feature_dim,
        "num_classes": meta.num_classes,
        "modality": modality,
    }
    model = build_teacher(spec)
    encoder, head = model[0], model[1]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr * 3, total_steps=epochs * -(-len(train) // batch_size)
    )
    x, y, xv, yv = (torch.tensor(a) for a in (train.x, train.y, val.x, val.y))
    rng = np.random.default_rng(seed)
    best, best_state, t0 = -1.0, None, time.perf_counter()
    for epoch in range(epochs):
        for idx in _batches(len(x), batch_size, rng):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = _accuracy(model, xv, yv)
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
        log(
            f"teacher[{modality}] epoch {epoch + 1}/{epochs}  loss {loss.item():.3f}  val acc {acc:.4f}"
        )
    model.load_state_dict(best_state)
    model.eval()
    test_acc = _accuracy(model, torch.tensor(test.x), torch.tensor(test.y))
    train_s = time.perf_counter() - t0

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"spec": saved_spec(spec), "state": model.state_dict()}, out / TEACHER_FILE)
    t1 = time.perf_counter()
    if engine == "ray":
        z, logits = encode_ray(
            out / TEACHER_FILE, split_path(benchmark, modality, "train"), use_gpu=use_gpu
        )
    else:
        z, logits = encode(encoder, head, train.x)
    bank_s = time.perf_counter() - t1
    result = {
        "modality": modality,
        "encoder": {"kind": kind, **kwargs},
        "val_acc": best,
        "test_acc": test_acc,
        "train_s": train_s,
        "bank_rows": len(z),
        "bank_s": bank_s,
        "engine": engine,
    }
    write_bank(
        out,
        ids=train.ids,
        y=train.y,
        z=z,
        logits=logits,
        head=head,
        info={
            "benchmark": meta.name,
            "fingerprint": benchmark_fingerprint(benchmark),
            "teacher_modality": modality,
            "teacher": result,
        },
    )
    log(f"teacher[{modality}] test acc {test_acc:.4f}; bank of {len(z)} rows written to {out}")
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--benchmark", required=True, help="folder of a built benchmark")
    p.add_argument("--modality", required=True, help="the teacher's modality, e.g. image")
    p.add_argument("--out", required=True, help="folder for teacher.pt and the bank")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument(
        "--encoder",
        type=encoder_arg,
        default="auto",
        help="auto (a CNN for (C, H, W) rows, an MLP for vectors), mlp, cnn, or a YAML mapping "
        "for a pretrained transformers model in a local folder: '{kind: hf, path: DIR}' "
        "(options project: true, finetune: true)",
    )
    p.add_argument(
        "--feature-dim",
        type=int,
        default=None,
        help="feature size of the bank (default 64; a pretrained encoder with project: false: "
        "its hidden size)",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="compute the bank in this process (local) or with Ray Data map_batches (ray)",
    )
    p.add_argument(
        "--gpu", action="store_true", help="with --engine ray: one GPU per map_batches actor"
    )
    args = p.parse_args(argv)
    if args.gpu and args.engine != "ray":
        p.error("--gpu needs --engine ray")
    try:
        result = train_teacher(
            args.benchmark,
            args.modality,
            args.out,
            encoder=args.encoder,
            feature_dim=args.feature_dim,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            engine=args.engine,
            use_gpu=args.gpu,
        )
    except ConfigError as e:
        cli.fail(str(e))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
