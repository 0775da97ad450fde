"""A sweep's trials as rows: the references every sweep runs, one row per trial, the table.

Nothing here imports Ray: a row is read from Tune's results (or anything shaped like them).
"""

from __future__ import annotations

import re
from pathlib import Path

from cmkd.config import POOL_ALGORITHMS, DistillConfig
from cmkd.pareto import COSTS, format_value

REFERENCE_UCMKD = {
    "algorithm": "ucmkd_sum",
    "fa": "reference_ot",
    "la": "kappa_reference",
    "w_fa": 1.0,
    "w_la": 1.0,
    "ot_reg": 0.1,
    "ot_iters": 100,
    "grad_clip": 5.0,
    "readout": "student",  # the paper code selects and reports the student head
}
POOL_REFERENCES = {
    # the pool with no teacher, aligned to the uniform class prior (class balance) ...
    "reference-ssl_only": {"algorithm": "ssl", "prior": "uniform"},
    # ... and to the teacher bank's class histogram: the teacher's class proportions alone
    "reference-ssl_prior": {"algorithm": "ssl", "prior": "bank"},
}
ROLES = ("reference-ce", "reference-ucmkd", *POOL_REFERENCES, "search")


def references(space, pool: bool = False) -> list[dict]:
    """The fixed trials every sweep runs besides the search; with an unlabelled pool, also the
    teacher-free controls ``ssl_only`` and ``ssl_prior``."""
    fixed = dict(space.fixed)
    ce = {**fixed, "algorithm": "ce", "role": "reference-ce"}
    ucmkd = {**fixed, **REFERENCE_UCMKD, "role": "reference-ucmkd"}
    pool_refs = [{**fixed, **cfg, "role": role} for role, cfg in POOL_REFERENCES.items()]
    return [ce, ucmkd, *(pool_refs if pool else [])]


def uniform_histogram(y) -> bool:
    """Whether every class has as many rows as every other (a balanced teacher bank)."""
    import numpy as np

    counts = np.bincount(y)
    return bool(counts.min() == counts.max())


def sweep_references(space, data) -> tuple[list[dict], list[dict], bool, bool]:
    """(every reference, those run as trials, pool, balanced) for a sweep of ``space`` on
    ``data`` (a RunData): the pool references when the student has a pool and the space a pool
    algorithm; on a balanced bank the bank's prior is the uniform one, so ssl_prior is ssl_only
    and is not run as a trial of its own."""
    pool = data.x_pool is not None and any(a in POOL_ALGORITHMS for a in space.algorithms)
    balanced = uniform_histogram(data.bank.y)
    every = references(space, pool)
    run = [r for r in every if not (balanced and r["role"] == "reference-ssl_prior")]
    return every, run, pool, balanced


FAMILIES = {"reference-ce": {"algorithm": "ce"}, **POOL_REFERENCES}
"""The tunable references: the search may try other members of their family (ce with another
learning rate or augmentation, ssl with other pseudo-label settings); the best member on
validation stands for the reference in the final retrain, tuned as the teacher's terms are."""


def family_best(
    rows: list[dict], role: str, metric: str, mode: str, ignore: tuple[str, ...] = ()
) -> dict | None:
    """The best row of a reference's family (full schedules first), or the reference's own row.
    Keys in ``ignore`` do not define the family (``prior`` when the bank's class histogram is
    uniform: then both priors are the same and ssl_only and ssl_prior are one family)."""
    want = {k: v for k, v in FAMILIES.get(role, {}).items() if k not in ignore} or None
    key, sign = "best_" + metric, (-1 if mode == "max" else 1)

    def member(r: dict) -> bool:
        if r["error"] is not None or key not in r:
            return False
        if want is None:
            return r["role"] == role
        return all(
            r["config"].get(k, DistillConfig.model_fields[k].default) == v for k, v in want.items()
        )

    ok = sorted(
        (r for r in rows if member(r)), key=lambda r: (not r.get("full", True), sign * r[key])
    )
    return ok[0] if ok else None


def distill_part(config: dict) -> dict:
    return {k: v for k, v in config.items() if k in DistillConfig.model_fields}


_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Diverged|Interrupt)): (.+)$")


def failure_reason(error) -> str:
    """The line of a trial's error that says why it failed: the innermost ``SomeError: message``
    of the tracebacks Ray nests (a Train worker's inside the trial's), else the first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        m = _EXCEPTION_LINE.match(line)
        if m:
            return f"{m.group(1)}: {m.group(2)}"[:300]
    return lines[0][:300] if lines else type(error).__name__


def summarise(result_grid, metric: str, mode: str) -> list[dict]:
    """One row per trial: its role, config, best validation metric and how far it ran."""
    rows = []
    for r in result_grid:
        df = r.metrics_dataframe
        if df is not None and "epoch" in df:  # an epoch reported again after a resume counts once
            df = df.drop_duplicates("epoch", keep="last")
        cfg = r.config or {}
        row = {
            "trial_id": (r.metrics or {}).get("trial_id") or Path(r.path).name,
            "role": cfg.get("role", "search"),
            "config": distill_part(cfg),
            "error": failure_reason(r.error) if r.error else None,
        }
        if df is not None and metric in df and len(df):
            best = df.loc[df[metric].idxmax() if mode == "max" else df[metric].idxmin()]
            row.update(
                {
                    "best_" + metric: float(best[metric]),
                    "best_epoch": int(best["epoch"]),
                    "epochs_run": int(df["epoch"].max()),
                    "test_acc_at_best": float(best.get("test_acc", float("nan"))),
                    "curve": [float(v) for v in df[metric]],
                    "timeline": timeline(df, metric),
                }
            )
            # a trial ASHA stopped has a partial value: it ran fewer epochs than its schedule
            row["full"] = row["epochs_run"] >= int(cfg.get("epochs", DistillConfig().epochs))
            for cost in COSTS:  # what the student costs, the same every epoch
                if cost in df and df[cost].notna().any():
                    value = float(df[cost].dropna().iloc[-1])
                    row[cost] = int(value) if cost == "student_params" else value
        rows.append(row)
    key = "best_" + metric
    sign = -1 if mode == "max" else 1
    # A failed trial ranks last whatever it reached before failing: a run that diverged is no
    # candidate, however good its epochs before the NaN.
    rows.sort(key=lambda r: (r["error"] is not None, sign * r[key] if key in r else float("inf")))
    return rows


def timeline(df, metric: str) -> list[list[float]]:
    """Per reported epoch: [wall-clock timestamp, the objective (best value so far), the test
    accuracy at the best epoch so far]; what a benchmark of the search needs."""
    if "timestamp" not in df:
        return []
    best = df["best_" + metric] if "best_" + metric in df else df[metric]
    test = df["best_test_acc"] if "best_test_acc" in df else df.get("test_acc")
    return [
        [float(t), float(b), float(x) if x == x else None]
        for t, b, x in zip(df["timestamp"], best, test if test is not None else best, strict=True)
    ]


def print_leaderboard(
    rows: list[dict], metric: str, max_epochs: int, top: int = 10, cost: str | None = None
) -> None:
    """The ``top`` rows as a Markdown table; with a two-objective sweep's ``cost``, its column
    and the student's size settings too."""
    shown = ("algorithm", "fa", "la", "w_fa", "w_la", "epsilon", "mmd_multiplier", "label_cost")
    if cost is not None:
        shown = ("student_width", "student_depth", *shown)
    stops = (
        "every trial runs its schedule" if cost else f"ASHA may stop a trial before {max_epochs}"
    )
    print(f"\nLeaderboard (best {metric} over epochs; {stops}):")
    extra = f" {cost} |" if cost else ""
    print(f"| # | role | {metric} |{extra} epochs | " + " | ".join(shown) + " |")
    print("|---:|---|---:|" + ("---:|" if cost else "") + "---:|" + "---|" * len(shown))
    for i, r in enumerate(rows[:top], 1):
        cfg = r["config"]
        vals = [_fmt(cfg.get(k)) for k in shown]
        score = f"{r['best_' + metric]:.4f}" if "best_" + metric in r else ""
        score = f"{score} failed".strip() if r["error"] else score
        if cost is not None:
            score += " | " + (format_value(cost, r[cost]) if cost in r else "")
        print(
            f"| {i} | {r['role']} | {score} | {r.get('epochs_run', 0)} | " + " | ".join(vals) + " |"
        )


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)
