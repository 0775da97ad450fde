"""Two objectives: accuracy against what the student costs at inference, and their Pareto front.

A space that declares ``objectives`` (``cmkd.space``) is searched for the trade-off between one
quality metric (what a single-objective sweep optimises) and one cost of the student: its
parameter count, or its measured inference latency. The sweep's answer is the Pareto front of
the trials: every point no other trial beats on one objective without losing on the other.

Nothing here imports Ray or torch: points are plain numbers, rows are the sweep's trial rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

QUALITY = {"val_acc": "max", "val_acc_teacher_head": "max", "val_ce": "min"}
"""Quality metrics: validation values, read as ``best_<metric>`` (the best epoch's)."""
COSTS = {"student_params": "min", "student_latency_ms": "min"}
"""Costs of the student at inference, constant over a trial: its parameter count, and the
median time of one forward pass of a batch of :data:`LATENCY_BATCH` rows on the trial's device."""
LATENCY_BATCH = 64
"""Rows per batch when a trial measures ``student_latency_ms``."""
MAX_OBJECTIVES = 2


def result_key(metric: str) -> str:
    """The result a trial reports for ``metric``: the best epoch's value of a quality metric
    (what the single-objective sweep ranks by), the cost itself for a cost."""
    return metric if metric in COSTS else "best_" + metric


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether point ``a`` is at least as good as ``b`` on every objective and better on one."""
    better = False
    for x, y, mode in zip(a, b, modes, strict=True):
        if mode == "min":
            x, y = -x, -y
        if x < y:
            return False
        better = better or x > y
    return better


def front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in input order. Points with equal values dominate
    none of each other, so ties are all kept (as Optuna's ``study.best_trials`` does); a point
    with a NaN or infinite value is never on the front. O(n²): sweeps have hundreds of trials."""
    ok = [i for i, p in enumerate(points) if all(math.isfinite(v) for v in p)]
    return [i for i in ok if not any(dominates(points[j], points[i], modes) for j in ok if j != i)]


def pareto_points(rows: list[dict], objectives: Sequence[tuple[str, str]]) -> list[dict]:
    """The front of a sweep's trial rows (``cmkd.leaderboard.summarise``), references included:
    one dict per point, cheapest first, with its row's ``name``, ``role``, ``trial_id``,
    ``values`` (metric -> value) and ``config``. A failed trial, one missing a value, or one cut
    short (``full`` false: a time budget ran out, so its accuracy is partial) is out."""
    keyed = [
        (r, [r.get(result_key(m)) for m, _ in objectives])
        for r in rows
        if r.get("error") is None and r.get("full", True)
    ]
    keyed = [(r, v) for r, v in keyed if all(isinstance(x, (int, float)) for x in v)]
    modes = [mode for _, mode in objectives]
    idx = front([v for _, v in keyed], modes)
    cost = next(i for i, (m, _) in enumerate(objectives) if m in COSTS)
    points = [
        {
            "name": keyed[i][0]["role"]
            if keyed[i][0]["role"] != "search"
            else f"search-{keyed[i][0]['trial_id']}",
            "role": keyed[i][0]["role"],
            "trial_id": keyed[i][0]["trial_id"],
            "values": {m: keyed[i][1][j] for j, (m, _) in enumerate(objectives)},
            "config": keyed[i][0]["config"],
        }
        for i in idx
    ]
    points.sort(key=lambda p: p["values"][objectives[cost][0]])
    return points


def format_value(metric: str, value: float) -> str:
    if metric == "student_params":
        return f"{int(value):,}"
    if metric == "student_latency_ms":
        return f"{value:.3f} ms"
    return f"{value:.4f}"


def front_table(points: list[dict], objectives: Sequence[tuple[str, str]]) -> str:
    """The front as a Markdown table, cheapest first: point number (its ``pareto/<k>.yaml``),
    the objectives, the quality metric retrained on fresh seeds (mean ± std; "off the front"
    when another point beats it there) if it was, the student's size settings and algorithm,
    and the trial."""
    names = [m for m, _ in objectives]
    retrained = any("fresh_seeds" in p for p in points)
    seeds_col = [f"{names[0]} on fresh seeds"] if retrained else []
    lines = [
        "| # | "
        + " | ".join(names + seeds_col)
        + " | student_width | student_depth | algorithm | trial |",
        "|---:|" + "---:|" * (len(names) + len(seeds_col)) + "---:|---:|---|---|",
    ]
    for k, p in enumerate(points):
        cfg = p["config"]
        cells = [format_value(m, p["values"][m]) for m in names]
        if retrained:
            cells.append(fresh_cell(p, names[0]))
        lines.append(
            f"| {k} | " + " | ".join(cells) + f" | {_or_default(cfg.get('student_width'))} | "
            f"{_or_default(cfg.get('student_depth'))} | {cfg.get('algorithm', '')} | {p['name']} |"
        )
    return "\n".join(lines)


def fresh_cell(point: dict, quality: str) -> str:
    """A point's retrained quality, ``0.6100 ± 0.0200 (3 seeds)``, flagged when it left the
    front; empty when it was not retrained (every seed failed)."""
    fresh = point.get("fresh_seeds")
    if not fresh:
        return ""
    off = "" if fresh["on_front"] else ", off the front"
    return (
        f"{fresh[quality + '_mean']:.4f} ± {fresh[quality + '_std']:.4f} "
        f"({len(fresh['seeds'])} seeds{off})"
    )


def _or_default(v) -> str:
    return "default" if v is None else str(v)
