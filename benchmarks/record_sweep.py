"""Record a small real sweep and keep a trimmed copy as the report's test fixture.

    flock /tmp/cmkd-heavy.lock python -m benchmarks.record_sweep [--out tests/fixtures/sweep-rec]

Builds a small synth benchmark (the shape of tests/test_sweep_e2e.py's fixture), runs the smoke
sweep on a local Ray cluster with ``python -m cmkd.tune`` as a user would, then copies only the
small text files the report reads into ``--out``: results.json, best.yaml, the Tune experiment
state, and every trial's params.json, result.json and progress.csv. Checkpoints, pickles,
TensorBoard event files and W&B folders are left behind; absolute paths are rewritten to the
fixture's own name so the copy is the same on every machine.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEEP_TOP = ("results.json", "best.yaml")
KEEP_TRIAL = ("params.json", "result.json", "progress.csv")


def trim(sweep: Path, out: Path) -> Path:
    """Copy the small text files of ``sweep`` into ``out`` (replaced), with paths made relative."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = [sweep / n for n in KEEP_TOP if (sweep / n).is_file()]
    files += sorted(sweep.glob("experiment_state-*.json"))
    for trial in sorted(p for p in sweep.iterdir() if (p / "params.json").is_file()):
        files += [trial / n for n in KEEP_TRIAL if (trial / n).is_file()]
    for f in files:
        dest = out / f.relative_to(sweep)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(f.read_text().replace(str(sweep), out.name))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "sweep-rec"))
    p.add_argument("--num-samples", type=int, default=6)
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args(argv)
    from cmkd.data.synth import build_synth

    with tempfile.TemporaryDirectory(prefix="cmkd-record-") as tmp:
        bench = Path(tmp) / "synth"
        build_synth(bench, "synth", seed=0, train_per_class=30, val_per_class=20, test_per_class=20)
        cmd = [
            sys.executable,
            "-m",
            "cmkd.tune",
            "--space",
            "smoke",
            "--benchmark",
            str(bench),
            "--storage",
            tmp,
            "--name",
            "rec",
            "--wandb",
            "disabled",
            "--final-seeds",
            "3",
            "--num-samples",
            str(args.num_samples),
            "--epochs",
            str(args.epochs),
        ]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        out = trim(Path(tmp) / "rec", Path(args.out))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"fixture written to {out} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
