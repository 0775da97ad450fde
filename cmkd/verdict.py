"""Whether distillation helped: the finalists against no distillation on paired seeds.

The search ranks trials on one validation run each, and the best of k noisy runs is optimistic
by about sigma * sqrt(2 ln k). So the sweep retrains its top candidates (references included)
and the no-distillation reference on fresh seeds, and decides on *paired* differences: for
candidate c and seed s, d_s = v(c, s) - v(ce, s) on the validation split (the same labelled
subset, validation rows and seed for both; for a minimised metric the sign is flipped).

Two noises blur D = mean_s d_s. Training noise (init, batches) varies across seeds:
SE_seeds = std_s(d_s) / sqrt(S). The validation rows are one finite sample shared by every seed,
so averaging seeds does not shrink their noise: with per-row values (correct 0/1, or
cross-entropy) r_csi, delta_i = mean_s (r_csi - r_ce,si) and SE_rows = std_i(delta_i) /
sqrt(N). Measured on avdigits-sized splits, SE_rows was the larger part: a candidate 6 points
above no distillation on every seed (SE_seeds 0.3) can sit on 100 lucky rows.

**The test:** c helped if it has at least :data:`MIN_SEEDS` paired seeds and
D > :data:`Z` * SE, SE = sqrt(SE_seeds^2 + SE_rows^2) (SE_rows is left out, and the verdict says
so, when per-row values are missing: runs of several data-parallel workers). The
recommendation is the candidate that passes with the highest mean validation value; if none
passes, it is no distillation. Test accuracy is reported for every finalist and never used to
choose.

Pure functions: no Ray, no files.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

MIN_SEEDS = 3
"""Paired seeds needed before a difference is called a gain."""
Z = 2.0
"""Standard errors the mean paired difference must clear."""
BASELINE = "reference-ce"


def paired(
    a: list[dict], b: list[dict], key: str, sign: float = 1.0, rows_key: str | None = None
) -> dict[str, float]:
    """Paired difference sign * (a - b) of ``key`` over the seeds both have.

    a, b: run records with ``seed`` and ``key`` (and, optionally, ``rows_key``: the per-row
    values, (N,), on the same rows for every run). Returns {mean, std, se, n, se_seeds,
    se_rows (nan without per-row values), rows (N or 0)}.
    """
    by_seed = {r["seed"]: r for r in b if key in r}
    pairs = [(r, by_seed[r["seed"]]) for r in a if r["seed"] in by_seed and key in r]
    diffs = [sign * (x[key] - y[key]) for x, y in pairs]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else float("nan")
    std = statistics.stdev(diffs) if n > 1 else float("nan")
    se_seeds = std / math.sqrt(n) if n > 1 else float("nan")
    se_rows, n_rows = float("nan"), 0
    rows = [(x.get(rows_key), y.get(rows_key)) for x, y in pairs] if rows_key else []
    if rows and all(u is not None and v is not None and len(u) == len(v) for u, v in rows):
        n_rows = len(rows[0][0])
        if n_rows > 1 and all(len(u) == n_rows for u, _ in rows):
            delta = [sign * statistics.fmean(u[i] - v[i] for u, v in rows) for i in range(n_rows)]
            se_rows = statistics.stdev(delta) / math.sqrt(n_rows)
        else:
            n_rows = 0
    parts = [x for x in (se_seeds, se_rows) if math.isfinite(x)]
    se = math.sqrt(sum(x * x for x in parts)) if math.isfinite(se_seeds) else float("nan")
    return {
        "mean": mean,
        "std": std,
        "se": se,
        "n": n,
        "se_seeds": se_seeds,
        "se_rows": se_rows,
        "rows": n_rows,
    }


def passes(diff: dict[str, float]) -> bool:
    """The test above: enough seeds, and a mean above Z standard errors (a zero spread with a
    positive mean passes)."""
    if diff["n"] < MIN_SEEDS or not math.isfinite(diff["mean"]) or diff["mean"] <= 0:
        return False
    return diff["mean"] > Z * diff["se"]


def decide(final: dict[str, dict], mode: str = "max") -> dict[str, Any]:
    """The verdict over a final retrain.

    final: name -> {"config", "runs": [{"seed", "val", "test_acc", ...}], ...}; ``val`` is the
    sweep's metric at each run's best epoch. Returns {"status": helped | did_not_help |
    undecided, "recommendation": name, "why": text, "candidates": {name: {"val": paired diff,
    "test": paired diff of test_acc, "passes"}}}.
    """
    sign = 1.0 if mode == "max" else -1.0
    base = final.get(BASELINE)
    if base is None or not base.get("runs"):
        return {
            "status": "undecided",
            "recommendation": None,
            "why": "the no-distillation reference has no final-retrain seeds to compare with",
            "candidates": {},
        }
    candidates = {}
    for name, entry in final.items():
        if name == BASELINE or not entry.get("runs"):
            continue
        val = paired(entry["runs"], base["runs"], "val", sign, rows_key="val_rows")
        test = paired(entry["runs"], base["runs"], "test_acc")
        candidates[name] = {"val": val, "test": test, "passes": passes(val)}
    winners = [n for n, c in candidates.items() if c["passes"]]
    if winners:
        best = max(winners, key=lambda n: sign * final[n]["val_mean"])
        return {"status": "helped", "recommendation": best, "why": "", "candidates": candidates}
    n_seeds = len(base["runs"])
    status = "did_not_help" if n_seeds >= MIN_SEEDS else "undecided"
    why = (
        f"only {n_seeds} final seed(s); at least {MIN_SEEDS} are needed to decide"
        if status == "undecided"
        else ""
    )
    return {"status": status, "recommendation": BASELINE, "why": why, "candidates": candidates}


def sentence(verdict: dict, final: dict[str, dict], metric: str, describe=lambda n: n) -> str:
    """The verdict in one plain sentence with its numbers (validation decides; test reported)."""
    cands = verdict["candidates"]
    base = final.get(BASELINE)

    def pts(d: dict) -> str:
        spread = f" ± {100 * d['se']:.1f}" if math.isfinite(d["se"]) else ""
        return f"{100 * d['mean']:+.1f}{spread}"

    if verdict["status"] == "helped":
        name = verdict["recommendation"]
        c = cands[name]
        return (
            f"Distillation helped: {describe(name)} beats no distillation by {pts(c['val'])} "
            f"{metric} points (mean ± standard error over {c['val']['n']} paired seeds"
            f"{_rows_note(c['val'])}), {pts(c['test'])} test accuracy points; best.yaml holds it."
        )
    closest = max(cands, key=lambda n: cands[n]["val"]["mean"], default=None)
    near = (
        f" (closest: {describe(closest)}, {pts(cands[closest]['val'])} {metric} points)"
        if closest is not None and math.isfinite(cands[closest]["val"]["mean"])
        else ""
    )
    if verdict["status"] == "undecided":
        return f"Not decided whether distillation helps: {verdict['why']}{near}."
    test = ""
    if base and "test_acc_mean" in base:
        test = (
            f" (test accuracy {100 * base['test_acc_mean']:.1f} ± {100 * base['test_acc_std']:.1f})"
        )
    return (
        f"Distillation did not help here: no finalist beat no distillation by more than "
        f"{Z:g} standard errors over {len(base['runs'])} paired seeds on validation{near}; "
        f"best.yaml holds the no-distillation config{test}."
    )


def _rows_note(d: dict) -> str:
    if d.get("rows"):
        return f" and {d['rows']} validation rows"
    return "; validation-row noise not included: no per-row values"
