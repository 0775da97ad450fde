"""What a sweep was started with (``sweep.json`` in its folder), checked when it is resumed.

A resumed sweep must be the same experiment: resuming with another benchmark, label budget,
space or seed would mix two experiments in one leaderboard, and a typo in ``--name`` must not
start a new sweep silently. Local folders and s3:// / gs:// URIs alike (pyarrow's filesystems).
"""

from __future__ import annotations

import json
from typing import Any

from cmkd.config import ConfigError

RECORD_FILE = "sweep.json"
FLAGS = {
    "benchmark": "--benchmark",
    "student": "--student",
    "teacher": "--teacher",
    "labels_per_class": "--labels-per-class",
    "val_per_class": "--val-per-class",
    "unlabelled": "--unlabelled",
    "encoder": "--encoder",
    "seed": "--seed",
    "num_samples": "--num-samples",
    "workers_per_trial": "--workers-per-trial",
    "runner": "--runner",
    "searcher": "--searcher",
    "early_stop": "--early-stop",
    "space": "--space (its contents, with --epochs)",
}


LATER_DEFAULTS = {"unlabelled": "all", "runner": "train", "encoder": "auto"}
"""Keys a record written by an earlier version lacks, and the value they had then."""


def record(args, space, data_cfg) -> dict[str, Any]:
    """The arguments that define a sweep's experiment (not where or how fast it runs)."""
    return {
        "benchmark": data_cfg.benchmark,
        "student": data_cfg.student,
        "teacher": data_cfg.teacher,
        "labels_per_class": data_cfg.labels_per_class,
        "val_per_class": data_cfg.val_per_class,
        "unlabelled": data_cfg.unlabelled,
        "encoder": data_cfg.model_dump()["encoder"],
        "seed": args.seed,
        "num_samples": args.num_samples,
        "workers_per_trial": args.workers_per_trial,
        "runner": args.runner,
        "searcher": args.searcher,
        "early_stop": args.early_stop,
        "space": space.to_dict(),
    }


def _fs(uri: str):
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def read_record(root: str, name: str) -> dict | None:
    import pyarrow.fs as pafs

    fs, base = _fs(root)
    path = f"{base}/{name}/{RECORD_FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def write_record(root: str, name: str, identity: dict) -> None:
    """Write ``sweep.json`` once, when the sweep starts (a resume keeps the first)."""
    if read_record(root, name) is not None:
        return
    fs, base = _fs(root)
    fs.create_dir(f"{base}/{name}", recursive=True)
    with fs.open_output_stream(f"{base}/{name}/{RECORD_FILE}") as f:
        f.write(json.dumps(identity, indent=2, default=str).encode())


def existing_sweeps(root: str) -> list[str]:
    """Names of the sweeps under ``root`` (folders with a record or Tune's experiment state)."""
    import pyarrow.fs as pafs

    fs, base = _fs(root)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError:
        return []
    names = []
    for info in infos:
        if info.type != pafs.FileType.Directory:
            continue
        marks = [f"{info.path}/{RECORD_FILE}", f"{info.path}/tuner.pkl"]
        if any(fs.get_file_info(m).type == pafs.FileType.File for m in marks):
            names.append(info.base_name)
    return sorted(names)


def check_resume(root: str, name: str, identity: dict, missing_ok: bool = False) -> None:
    """ConfigError unless sweep ``name`` exists under ``root`` and was started with the same
    experiment arguments; the message names each difference, or lists the sweeps that exist."""
    stored = read_record(root, name)
    if stored is None:
        import pyarrow.fs as pafs

        fs, base = _fs(root)
        started = fs.get_file_info(f"{base}/{name}/tuner.pkl").type == pafs.FileType.File
        if started or missing_ok:
            return  # a sweep from before records were kept, or a job told to start it
        others = existing_sweeps(root)
        raise ConfigError(
            f"--resume: there is no sweep named {name!r} in {root}; "
            + (
                f"the sweeps there: {', '.join(others)}"
                if others
                else "there is no sweep there at all"
            )
            + ". Drop --resume to start it."
        )
    now = json.loads(json.dumps(identity, default=str))
    diffs = []
    for k, v in now.items():
        if v == stored.get(k, LATER_DEFAULTS.get(k)):
            continue
        if k == "space" and isinstance(stored.get(k), dict):
            diffs += [f"the space's {d}" for d in _flat_diff(stored[k], v)]
        else:
            diffs.append(f"{FLAGS.get(k, k)} was {stored.get(k)!r}, now {v!r}")
    if diffs:
        raise ConfigError(
            f"--resume: sweep {name!r} in {root} was started with other arguments: "
            + "; ".join(diffs)
            + ". Resume with the arguments it was started with, or start a new sweep with "
            "another --name."
        )


def _flat_diff(old: Any, new: Any, at: str = "") -> list[str]:
    """Each key path where two nested dicts differ, as 'path was OLD, now NEW'."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _flat_diff(old.get(k), new.get(k), f"{at}.{k}" if at else str(k))
        return out
    return [] if old == new else [f"{at} was {old!r}, now {new!r}"]
