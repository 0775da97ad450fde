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
        what = (
            "The unlabelled pool helped, with no teacher"
            if name.startswith("reference-ssl") or "algorithm=ssl" in describe(name)
            else "Distillation helped"
        )
        return (
            f"{what}: {describe(name)} beats no distillation by {pts(c['val'])} "
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
        + (_resolution_note(cands[closest]["val"]) if closest is not None else "")
    )


def _resolution_note(d: dict) -> str:
    """What the validation rows could resolve, when the closest gain was real-looking but small
    next to its noise: the user's lever is more validation rows, not more seeds."""
    if not d.get("rows") or not math.isfinite(d["se"]) or d["mean"] <= 0:
        return ""
    return (
        f" With {d['rows']} validation rows a gain must exceed about {100 * Z * d['se']:.1f} "
        f"points to be told from noise (this one: {100 * d['mean']:+.1f}); more validation rows "
        "(--val-per-class) resolve smaller gains."
    )


def _rows_note(d: dict) -> str:
    if d.get("rows"):
        return f" and {d['rows']} validation rows"
    return "; validation-row noise not included: no per-row values"


TEACHER_FREE = ("ce", "ssl")
"""Algorithms that read nothing of the teacher but, for ``ssl`` with ``prior: bank``, the bank's
class histogram."""
CONTROLS = ("permuted", "neutral")
PARTS = (
    # name, minuend, subtrahend, what the difference measures
    ("pool", "reference-ssl_only", BASELINE, "the unlabelled pool without the teacher"),
    ("prior", "reference-ssl_prior", "reference-ssl_only", "the teacher's class proportions"),
    ("features", "teacher", "reference-ssl_prior", "the teacher's features beyond its proportions"),
    ("teacher", "teacher", "reference-ssl_only", "the teacher's own part (proportions + features)"),
    *(
        (f"control-{c}", f"control-{c}", "reference-ssl_prior", f"a {c} teacher's features")
        for c in CONTROLS
    ),
)
"""The paired differences that attribute a gain: ``teacher`` stands for the candidate that reads
the teacher (the recommendation when it does)."""
METRICS = {"val": "val_rows", "test_acc": None, "test_bacc": None}


def attribute(final: dict[str, dict], teacher: str | None, mode: str = "max") -> dict[str, Any]:
    """Who gave the gain, as paired differences over the final seeds: for each part of
    :data:`PARTS` whose two runs exist, {metric: paired diff} for validation (with its per-row
    noise), test accuracy and test balanced accuracy, and ``says``: helped / harmed / within
    noise, decided on validation by the test of :func:`passes` (either sign)."""
    sign = 1.0 if mode == "max" else -1.0
    names = {"teacher": teacher} if teacher else {}
    out: dict[str, Any] = {"teacher": teacher, "parts": {}}
    for part, a, b, what in PARTS:
        ea, eb = final.get(names.get(a, a)), final.get(names.get(b, b))
        if not ea or not eb or not ea.get("runs") or not eb.get("runs"):
            continue
        diffs = {
            m: paired(ea["runs"], eb["runs"], m, sign if m == "val" else 1.0, rows_key=rk)
            for m, rk in METRICS.items()
        }
        v = diffs["val"]
        flipped = {**v, "mean": -v["mean"]}
        says = "helped" if passes(v) else "harmed" if passes(flipped) else "within noise"
        out["parts"][part] = {"what": what, "says": says, **diffs}
    return out


def attribution_sentence(att: dict[str, Any], metric: str) -> str:
    """The attribution in words, one clause per part."""
    parts = att.get("parts", {})
    if not parts:
        return ""

    def clause(name: str) -> str:
        p = parts[name]
        d, t, b = p["val"], p["test_acc"], p["test_bacc"]
        spread = f" ± {100 * d['se']:.1f}" if math.isfinite(d["se"]) else ""
        return (
            f"{p['what']}: {100 * d['mean']:+.1f}{spread} {metric} points, {p['says']} "
            f"(test {100 * t['mean']:+.1f}, balanced {100 * b['mean']:+.1f})"
        )

    order = ["pool", "prior", "features", "teacher", *(f"control-{c}" for c in CONTROLS)]
    lines = [clause(n) for n in order if n in parts]
    head = f"Attribution (paired over seeds; teacher candidate: {att['teacher'] or 'none'}): "
    return head + "; ".join(lines) + "."
