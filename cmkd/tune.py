"""Search distillation hyperparameters: Ray Tune + Optuna (TPE) + ASHA, Ray Train in every trial.

    python -m cmkd.tune                                   # the default sweep: sonified + its pool
    python -m cmkd.tune --benchmark avdigits              # where the teacher cannot help
    python -m cmkd.tune --space sinkhorn --benchmark synth --num-samples 40
    python -m cmkd.tune --name my-sweep --resume           # continue an interrupted sweep
    ray job submit -- python -m cmkd.tune --storage s3://bucket/sweeps --workers-per-trial 2 --gpus-per-worker 1

Every sweep also runs two reference trials: no distillation (``ce``) and the paper code's UCMKD
defaults; they run first, and each the space can express warm-starts TPE. The objective is the
best validation value up to each epoch (ASHA, Optuna and the leaderboard read the same number).
A space with two ``objectives`` (accuracy against the student's size or latency) ends instead
with their Pareto front, one runnable experiment per point (``pareto/<k>.yaml``): no early
stopping, the front's points retrained on fresh seeds, no verdict. Otherwise, at the end the top candidates (references included)
and both references are retrained on fresh seeds, and the verdict is decided on paired seeds
against no distillation: the recommendation is a distillation config only if its mean
validation gain clears 2 standard errors over >= 3 seeds, else it is no distillation. The sweep folder receives ``results.json`` (every trial, the
final retrain, the verdict) and ``best.yaml`` (``python -m cmkd.train --config best.yaml``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
import time
from pathlib import Path

from cmkd import cli
from cmkd.config import VAL_PER_CLASS, ConfigError, DataConfig, DistillConfig, encoder_arg
from cmkd.leaderboard import (  # noqa: F401 (the names tests and benchmarks import from here)
    REFERENCE_UCMKD,
    failure_reason,
    print_leaderboard,
    references,
    summarise,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.parser("python -m cmkd.tune", __doc__)
    p.add_argument(
        "--space",
        default="auto",
        help="search space: a name in search_spaces/ or a YAML path; auto (the default) is "
        "'pool' when the student has an unlabelled pool (every built-in benchmark has one) and "
        "--unlabelled is not 0, else 'default'",
    )
    p.add_argument(
        "--benchmark",
        default="sonified",
        help="synth, synth-nohelp, avdigits, sonified, sonified-lt, sonified-paired, or the folder of a built "
        "benchmark",
    )
    p.add_argument("--student", help="student modality (default: the benchmark's second)")
    p.add_argument("--teacher", help="teacher modality (default: the benchmark's first)")
    p.add_argument(
        "--encoder",
        type=encoder_arg,
        default="auto",
        help="student encoder: auto (a CNN for (C, H, W) rows, an MLP for vectors), mlp, cnn, "
        "or a YAML mapping for a pretrained transformers model in a local folder, "
        "'{kind: hf, path: DIR}' (options project: true, finetune: true), for sequence (T, F) "
        "and spectrogram (1, F, T) rows; checked with the data, before any trial",
    )
    p.add_argument(
        "--labels-per-class", default="5", help="labelled student samples per class, or 'all'"
    )
    p.add_argument(
        "--val-per-class",
        default=None,
        help="validation rows per class, drawn from the labelled train rows disjoint from the "
        "training labels, or 'split' for the benchmark's own validation table (default: the "
        f"space's val_per_class (pool: 25), else {VAL_PER_CLASS}); more rows resolve smaller "
        "gains",
    )
    p.add_argument(
        "--unlabelled",
        default="all",
        type=cli.unlabelled,
        help="rows of the student modality's unlabelled pool ({student}_unlabelled.parquet) the "
        "pool algorithms (ucmkd_pool, ssl) may use: a number, 'all' (default; none when the "
        "benchmark has no pool) or 0",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=8,
        help="trials searched by Optuna, besides the two reference trials (default 8)",
    )
    p.add_argument("--storage", default="runs", help="local folder, s3:// or gs:// (default: runs)")
    p.add_argument("--name", help="sweep name (default: derived from benchmark and space)")
    p.add_argument("--resume", action="store_true", help="continue the sweep of this name")
    p.add_argument(
        "--wandb",
        choices=("online", "offline", "disabled"),
        default="offline",
        help="W&B mode; online needs WANDB_API_KEY in the environment (default offline)",
    )
    p.add_argument("--wandb-project", default="cmkd")
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers (DDP ranks)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="default: 1, or what fits when the cluster has fewer CPUs",
    )
    p.add_argument(
        "--runner",
        choices=("auto", "train"),
        default="auto",
        help="auto: a one-worker trial trains in its own process (Tune reuses it for the next "
        "trial), several workers or streamed rows make a Ray Train run; train: every trial is a "
        "Ray Train run (default auto)",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="trials at once (default: what the cluster holds; on a cluster that autoscales, "
        "trials follow its nodes and this is their ceiling)",
    )
    p.add_argument(
        "--searcher",
        choices=("tpe", "random"),
        default="tpe",
        help="tpe: Optuna's TPE, warm-started by the references and the space's start points; "
        "random: independent random draws, as a baseline (default tpe)",
    )
    p.add_argument(
        "--early-stop",
        choices=("asha", "none"),
        default="asha",
        help="asha: stop poor trials at rungs of 1/4, 1/2, ... of the epochs; none: every trial "
        "runs its whole schedule (default asha)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop starting and running trials after this long; the final retrain and the "
        "verdict follow with what finished (default: no limit, --num-samples decides)",
    )
    p.add_argument(
        "--final-seeds", type=int, default=3, help="seeds of the final retrain (0: skip)"
    )
    p.add_argument(
        "--controls",
        action="store_true",
        help="with a pool: also retrain the teacher-reading candidate with a permuted-label and "
        "a neutral teacher on the final seeds (what isolates the teacher's own part on a "
        "benchmark; 6 more runs)",
    )
    p.add_argument("--epochs", type=int, default=None, help="override the space's epochs")
    p.add_argument(
        "--seed",
        type=cli.seed,
        default=0,
        help="seed of the search (TPE), the labelled subset and the validation draw",
    )
    p.add_argument("--data-root", default="data", help="where built-in benchmarks are built")
    p.add_argument(
        "--data-loading",
        choices=("auto", "memory", "stream"),
        default="auto",
        help="labelled student rows held in each worker's memory, or streamed from parquet "
        "through Ray Data every epoch; auto streams above --stream-above-mb (default auto)",
    )
    p.add_argument("--stream-above-mb", type=float, default=1024.0, metavar="MB")
    p.add_argument(
        "--check",
        action="store_true",
        help="check every argument, the space and the data, say what would run, and exit "
        "without starting Ray",
    )
    return p.parse_args(argv)


RANGES = (  # flag, attribute, lowest allowed, what it is
    ("--num-samples", "num_samples", 0, "searched trials (0: the references only)"),
    ("--final-seeds", "final_seeds", 0, "seeds of the final retrain (0 skips it)"),
    ("--max-concurrent", "max_concurrent", 1, "trials at once"),
    ("--workers-per-trial", "workers_per_trial", 1, "Train workers per trial"),
    ("--gpus-per-worker", "gpus_per_worker", 0, "GPUs per worker"),
)
POSITIVE = (  # float flags that must be finite and > 0 when given
    ("--cpus-per-worker", "cpus_per_worker", "CPUs per worker"),
    ("--time-budget", "time_budget", "a number of seconds"),
    ("--stream-above-mb", "stream_above_mb", "a size in MiB"),
)


def check_flags(args) -> None:
    """Ranges of the numeric flags and the sweep name, before anything starts or is written."""
    for flag, attr, low, what in RANGES:
        value = getattr(args, attr)
        if value is not None and not (math.isfinite(value) and value >= low):
            raise ConfigError(f"{flag} {value:g}: expected {what}, a number >= {low}")
    for flag, attr, what in POSITIVE:
        value = getattr(args, attr)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag} {value:g}: expected {what}, a finite number > 0")
    if args.name is not None and not cli.valid_sweep_name(args.name):
        raise ConfigError(
            f"--name {args.name!r}: a sweep name is letters, digits, '.', '_' and '-', starts "
            "with a letter or digit, has no '..' and at most 100 characters (it names one "
            "folder inside --storage)"
        )


def auto_space(args) -> str:
    """--space auto: the pool space when the student modality has an unlabelled pool to learn
    from (every built-in benchmark builds one), the paired space when its rows also have
    partners (a pair_id column), else the default space; any other value as is."""
    if args.space != "auto":
        return args.space
    if args.unlabelled == 0:
        return "default"
    folder = Path(args.benchmark)
    if not (folder / "meta.json").is_file():  # a built-in (built with its pool) or an error later
        return "paired" if args.benchmark.endswith("-paired") else "pool"
    from cmkd.data import has_pool, read_meta
    from cmkd.data.schema import paired_modalities

    meta = read_meta(folder)
    modalities = meta.modalities
    student = args.student or (modalities[1] if len(modalities) > 1 else modalities[0])
    if not has_pool(folder, student):
        return "default"
    return "paired" if student in paired_modalities(folder, meta) else "pool"


def space_pairings(space) -> tuple[str, ...]:
    """The values of ``pairing`` the space's trials can take."""
    for p in space.params:
        if p.name == "pairing":
            return tuple(p.choices)
    return (space.fixed.get("pairing", "class_matched"),)


def check_pairing(space, data) -> None:
    """A space that pairs needs a benchmark with pairs, and kd needs a space that pairs: said
    before any trial starts."""
    pairings = space_pairings(space)
    if "kd" in space.algorithms and "paired" not in pairings:
        raise ConfigError(
            f"{space.path}: params.algorithm can be 'kd' (KD toward each row's partner), but no "
            "trial pairs its rows: add 'pairing: paired' to fixed, or use kd_unpaired"
        )
    if "paired" in pairings:
        from cmkd.train import check_pairing as check_data

        check_data(DistillConfig(pairing="paired"), data, f"{space.path}: pairing")


def sweep_name(args) -> str:
    if args.name:
        return args.name
    bench = Path(args.benchmark).name
    space = Path(args.space).stem
    return f"{bench}-{space}-{args.labels_per_class}lpc-s{args.seed}"


def storage_root(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).resolve())


def check_storage(storage: str) -> None:
    """A local storage folder must be writable before anything starts."""
    if "://" in storage:
        return
    root = Path(storage)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".cmkd-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"--storage {storage}: cannot write there ({e.strerror}); "
            "pick a writable folder or an s3:// / gs:// URI"
        ) from None


WANDB_PROBE_S = 8.0
"""At most this long is spent finding out whether W&B takes the key before a sweep starts."""


def wandb_problem(timeout_s: float) -> str | None:
    """Why W&B cannot log online now (server unreachable, key refused), or None if it can.

    One GraphQL ``viewer`` query with the key from the environment, in a daemon thread so that a
    hanging DNS lookup or connection costs at most ``timeout_s``. The key is sent to the W&B
    server only, and never appears in the message.
    """
    import base64
    import json
    import threading
    import urllib.error
    import urllib.request

    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")
    auth = base64.b64encode(f"api:{os.environ['WANDB_API_KEY']}".encode()).decode()
    request = urllib.request.Request(
        f"{base}/graphql",
        data=json.dumps({"query": "query { viewer { id } }"}).encode(),
        headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
    )
    answer: list[str | None] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as r:
                viewer = ((json.load(r) or {}).get("data") or {}).get("viewer")
            answer.append(None if viewer else f"W&B at {base} did not accept WANDB_API_KEY")
        except urllib.error.HTTPError as e:
            answer.append(f"W&B at {base} refused WANDB_API_KEY (HTTP {e.code})")
        except (OSError, ValueError) as e:  # URLError, timeouts, resets, a non-JSON answer
            answer.append(f"W&B at {base} cannot be reached ({getattr(e, 'reason', e)})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return answer[0] if answer else f"W&B at {base} did not answer within {timeout_s:g} s"


def setup_wandb_env(mode: str, root: str, name: str) -> str:
    """W&B reads these when its runs start in Ray's actors: set before ray.init. Returns the
    mode the sweep logs in (online falls back to offline when W&B cannot take the runs)."""
    if mode == "disabled":
        os.environ.pop("WANDB_API_KEY", None)
        os.environ["WANDB_MODE"] = "disabled"
        return mode
    if mode == "online":
        problem = (
            "WANDB_API_KEY is not set"
            if not os.environ.get("WANDB_API_KEY")
            else wandb_problem(WANDB_PROBE_S)
        )
        if problem:
            print(
                f"warning: --wandb online but {problem}; logging offline instead "
                "(upload later with `wandb sync`)",
                flush=True,
            )
            mode = "offline"
    if mode != "online":  # no run uploads: keep the key out of Ray's runtime environments
        os.environ.pop("WANDB_API_KEY", None)
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    if "://" not in root:  # keep W&B's folders inside the sweep, none left in /tmp or ~
        keep_wandb_in(Path(root) / name / "wandb")
    return mode


def keep_wandb_in(base: Path) -> None:
    """Point W&B's run, cache, config and data folders under ``base`` (unless already set)."""
    for var, sub in (
        ("WANDB_DIR", ""),
        ("WANDB_CACHE_DIR", ".cache"),
        ("WANDB_CONFIG_DIR", ".config"),
        ("WANDB_DATA_DIR", ".data"),
    ):
        (base / sub).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault(var, str(base / sub))


def check_student_size(space, data, data_cfg: DataConfig) -> None:
    """The deepest student the space can ask for must fit the data's input (each CNN block
    halves it): a ConfigError naming the key now, not a failure in every such trial."""
    from cmkd.train import make_student

    depths = [space.fixed.get("student_depth")]
    for p in space.params:
        if p.name == "student_depth":
            depths = list(p.choices) if p.kind == "choice" else [p.high]
    depth = max((d for d in depths if d is not None), default=None)
    if depth is not None:
        try:
            make_student(data, data_cfg, None, int(depth))
        except ValueError as e:
            raise ConfigError(f"{space.path}: student_depth: {e}") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    try:
        from cmkd.space import SpaceError, load_space

        args.space = auto_space(args)
        space = load_space(args.space)
        if args.epochs is not None:  # --epochs 0 is an error, not 'unset'
            DistillConfig.from_dict({"epochs": args.epochs}, source="--epochs")
            if "epochs" in space.names:
                raise ConfigError(f"--epochs: {space.path} searches epochs; drop one of the two")
            space = dataclasses.replace(space, fixed={**space.fixed, "epochs": args.epochs})
        if args.val_per_class is None:
            args.val_per_class = str(space.val_per_class or VAL_PER_CLASS)
        check_flags(args)
        if args.labels_per_class != "all" and (
            not args.labels_per_class.isdigit() or int(args.labels_per_class) < 1
        ):
            raise ConfigError(
                f"--labels-per-class {args.labels_per_class!r}: expected a whole number of "
                "labelled samples per class, or 'all'"
            )
        lpc = (
            args.labels_per_class if args.labels_per_class == "all" else int(args.labels_per_class)
        )
        if args.val_per_class != "split" and (
            not args.val_per_class.isdigit() or int(args.val_per_class) < 1
        ):
            raise ConfigError(
                f"--val-per-class {args.val_per_class!r}: expected a whole number of validation "
                "rows per class, or 'split'"
            )
        vpc = args.val_per_class if args.val_per_class == "split" else int(args.val_per_class)
        from cmkd.trial import for_machine

        for_machine({}, args.workers_per_trial, args.gpus_per_worker, args.cpus_per_worker)
        data_cfg = DataConfig(
            benchmark=args.benchmark,
            student=args.student,
            teacher=args.teacher,
            encoder=args.encoder,
            labels_per_class=lpc,
            val_per_class=vpc,
            unlabelled=args.unlabelled,
            seed=args.seed,
            data_root=args.data_root,
            loading=args.data_loading,
            stream_above_mb=args.stream_above_mb,
        )
        name, root = sweep_name(args), storage_root(args.storage)
        check_storage(args.storage)
        if "://" not in root and (Path(root) / name).exists() and not args.resume:
            raise ConfigError(
                f"sweep {name!r} already exists in {root}; pass --resume to continue "
                f"it, or --name to start another"
            )
        from cmkd.sweep_record import check_resume, record

        identity = record(args, space, data_cfg)
        if args.resume:
            # cluster/submit.py's jobs always pass --resume: their first attempt starts the sweep
            missing_ok = os.environ.get("CMKD_START_IF_MISSING") == "1"
            check_resume(root, name, identity, missing_ok=missing_ok)
        from cmkd.train import load_run_data

        data = load_run_data(data_cfg)
        check_pairing(space, data)
        check_student_size(space, data, data_cfg)
        args.prepare_s = time.perf_counter() - t_start  # building, validating, loading the data
    except (ConfigError, SpaceError, ValueError, FileNotFoundError) as e:
        return cli.error(str(e))
    if args.check:
        from cmkd.leaderboard import sweep_references

        refs = sweep_references(space, data)[1]
        print(
            f"ok: sweep {name!r} in {root}: {args.num_samples} searched + {len(refs)} reference "
            f"trials of {space.path}, {data.student} student ({len(data.y_train)} labelled, "
            f"{len(data.y_val)} validation rows) from the {data.teacher} teacher"
            + (f"; two objectives, {space.metric} against {space.cost}" if space.pareto else "")
        )
        return 0
    args.wandb = setup_wandb_env(args.wandb, root, name)  # the summary run logs the same way
    # `ray job stop`, a scheduler or `kill` send SIGTERM: exit through Python so that the local
    # Ray cluster this process started is shut down, not left holding the machine.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from cmkd.sweep_record import write_record

    write_record(root, name, identity)
    from cmkd.sweep import run_sweep

    return run_sweep(args, space, data_cfg, data, name, root, t_start)


if __name__ == "__main__":
    raise SystemExit(main())
