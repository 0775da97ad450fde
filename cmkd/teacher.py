"""Train the teacher on its own modality, then write its bank (features and logits, once).

    python -m cmkd.teacher --benchmark data/avdigits --modality image --out data/avdigits/teacher-image

The teacher is selected by best validation accuracy and frozen; only its head ships with the bank.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmkd.bank import write_bank
from cmkd.data import load_split, validate_benchmark
from cmkd.models import build_encoder, linear_head

TEACHER_FILE = "teacher.pt"


def default_encoder(in_shape: tuple[int, ...]) -> str:
    """A CNN for (C, H, W) inputs (images, log-mel), an MLP for vectors."""
    return "cnn" if len(in_shape) == 3 else "mlp"


def benchmark_fingerprint(directory: str | Path) -> str:
    """Identifies a built benchmark: meta.json and the size of every table. Banks carry it."""
    directory = Path(directory)
    h = hashlib.sha256((directory / "meta.json").read_bytes())
    for f in sorted(directory.glob("*.parquet")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


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
        z = encoder(torch.from_numpy(x[i : i + batch_size]))
        zs.append(z.numpy())
        logits.append(head(z).numpy())
    return np.concatenate(zs), np.concatenate(logits)


def train_teacher(
    benchmark: str | Path,
    modality: str,
    out: str | Path,
    *,
    feature_dim: int = 64,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    log=print,
) -> dict:
    """Train encoder + linear head on ``modality``'s train split; write the teacher and its bank.

    Returns the teacher's validation and test accuracy and the timings.
    """
    torch.manual_seed(seed)
    meta = validate_benchmark(benchmark, [modality])
    shape = meta.shapes[modality]
    train, val, test = (load_split(benchmark, modality, s, meta) for s in ("train", "val", "test"))
    kind = default_encoder(shape)
    encoder = build_encoder(kind, shape, feature_dim=feature_dim)
    head = linear_head(feature_dim, meta.num_classes)
    model = nn.Sequential(encoder, head)
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
    test_acc = _accuracy(model, torch.tensor(test.x), torch.tensor(test.y))
    train_s = time.perf_counter() - t0

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = {
        "encoder": kind,
        "in_shape": list(shape),
        "feature_dim": feature_dim,
        "num_classes": meta.num_classes,
        "modality": modality,
    }
    torch.save({"spec": spec, "state": model.state_dict()}, out / TEACHER_FILE)
    t1 = time.perf_counter()
    z, logits = encode(encoder, head, train.x)
    bank_s = time.perf_counter() - t1
    result = {
        "modality": modality,
        "val_acc": best,
        "test_acc": test_acc,
        "train_s": train_s,
        "bank_rows": len(z),
        "bank_s": bank_s,
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
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    result = train_teacher(
        args.benchmark,
        args.modality,
        args.out,
        feature_dim=args.feature_dim,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
