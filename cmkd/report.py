"""Read a sweep back: an HTML report with PNG figures, the same tables in W&B, an Optuna study.

    python -m cmkd.report runs/NAME                        # writes runs/NAME/report/index.html
    python -m cmkd.report s3://bucket/sweeps/NAME --out report-NAME
    python -m cmkd.report runs/NAME --wandb offline        # the tables and figures to W&B too

The report holds the leaderboard; the sweep's verdict and the finalists against the
no-distillation reference and the paper code's UCMKD defaults over the final retrain's fresh
seeds (paired differences on validation, which decides, and on test, which is reported); which hyperparameters mattered
(Optuna's fANOVA and mean-decrease-impurity importances over the searched trials); parallel
coordinates; the learning curves of the top trials with ASHA's stopping points; and the two
quantities of the paper's bound, feature alignment and label alignment, over training; for a
two-objective sweep, its Pareto front (every trial, the front highlighted and connected). The
sweep's trials are also written as an Optuna study (``optuna-study.log`` in the sweep folder;
``optuna-dashboard runs/NAME/optuna-study.log`` opens it).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from cmkd import cli
from cmkd.pareto import COSTS, format_value, fresh_cell, result_key
from cmkd.study import STUDY_FILE, export_study, load_sweep, to_study
from cmkd.verdict import attribution_sentence

# Files the report reads; a remote sweep's checkpoints and W&B folders are not downloaded.
WANTED = ("results.json", "best.yaml", "params.json", "progress.csv", "result.json")
ROLE_COLOURS = {"reference-ce": "black", "reference-ucmkd": "tab:gray"}
FINAL_ORDER = (
    "winner",
    "reference-ce",
    "reference-ucmkd",
    "reference-ssl_only",
    "reference-ssl_prior",
    "control-permuted",
    "control-neutral",
)
FINAL_LABELS = {
    "winner": "winner",
    "reference-ce": "no distillation (ce)",
    "reference-ucmkd": "UCMKD reference defaults",
    "reference-ssl_only": "the pool, no teacher (ssl_only)",
    "reference-ssl_prior": "the pool, the bank's class prior (ssl_prior)",
    "control-permuted": "control: permuted-label teacher",
    "control-neutral": "control: neutral teacher",
}


# ---------------------------------------------------------------- fetching a sweep


def fetch(sweep: str, dest: Path) -> Path:
    """A local folder holding the sweep: the path itself, or a copy of a remote sweep's small
    files (s3://, gs://, any URI pyarrow.fs understands) made in ``dest``."""
    if "://" not in sweep:
        path = Path(sweep)
        if not path.is_dir():
            raise FileNotFoundError(f"{sweep}: no such sweep folder")
        return path
    import pyarrow.fs as pafs

    try:
        if sweep.startswith("gs://"):  # GCS retries for 15 min by default: give up sooner
            from datetime import timedelta

            fs = pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=20))
            root = sweep[len("gs://") :]
        else:
            fs, root = pafs.FileSystem.from_uri(sweep)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except Exception as e:  # pyarrow raises OSError, ArrowInvalid, ... by backend
        raise FileNotFoundError(
            f"{sweep}: cannot list the sweep ({type(e).__name__}: {e}). Check the URI and the "
            "credentials in the environment, or copy the sweep folder down and pass its path"
        ) from None
    root = root.rstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    copied = 0
    for info in infos:
        rel = info.path[len(root) :].lstrip("/")
        if info.type != pafs.FileType.File or "train-runs/" in rel or "/wandb/" in f"/{rel}":
            continue
        name = rel.rsplit("/", 1)[-1]
        if name in WANTED or (name.startswith("experiment_state-") and name.endswith(".json")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src, open(dest / rel, "wb") as out:
                shutil.copyfileobj(src, out)
            copied += 1
    if not copied:
        raise FileNotFoundError(f"{sweep}: no sweep files found there")
    # A remote sweep writes results.json beside the driver (runs/NAME), not into the bucket.
    local_results = Path("runs") / root.rsplit("/", 1)[-1] / "results.json"
    if not (dest / "results.json").exists() and local_results.is_file():
        shutil.copy(local_results, dest / "results.json")
    return dest


# ---------------------------------------------------------------- tables


def leaderboard(sweep: dict) -> tuple[list[str], list[list]]:
    metric, max_epochs = sweep["metric"], sweep["max_epochs"]
    shown = _shown_params(sweep)
    cols = ["#", "role", "trial", f"best {metric}", "best epoch", "epochs run", "test acc @best"]
    rows = []
    for i, t in enumerate(sweep["trials"], 1):
        stopped = t["role"] == "search" and 0 < t["epochs_run"] < max_epochs
        rows.append(
            [
                i,
                t["role"],
                t["trial_id"],
                t.get("best", "error" if t.get("error") else "n/a"),
                t.get("best_epoch", ""),
                f"{t['epochs_run']}/{max_epochs}" + (" (ASHA)" if stopped else ""),
                t.get("at_best", {}).get("test_acc", ""),
                *[t["config"].get(k, "") for k in shown],
            ]
        )
    return cols + shown, rows


def pareto_table(sweep: dict) -> tuple[list[str], list[list]]:
    """A two-objective sweep's front, cheapest first: the objectives, the student's size, the
    trial and the experiment file of each point (no rows for a single objective)."""
    results = sweep["results"] or {}
    names = [o["metric"] for o in results.get("objectives") or []]
    points = results.get("pareto") or []
    fresh = [f"{names[0]} on fresh seeds"] if any("fresh_seeds" in p for p in points) else []
    cols = ["#", *names, *fresh, "student_width", "student_depth", "algorithm", "trial"]
    cols.append("experiment")
    rows = []
    for k, p in enumerate(points):
        cfg = p["config"]
        rows.append(
            [
                k,
                *[format_value(m, p["values"][m]) for m in names],
                *([fresh_cell(p, names[0])] if fresh else []),
                cfg.get("student_width", "default"),
                cfg.get("student_depth", "default"),
                cfg.get("algorithm", ""),
                p["name"],
                p.get("file", ""),
            ]
        )
    return cols, rows


def _shown_params(sweep: dict) -> list[str]:
    space = sweep["space"]
    names = list(space.names) if space is not None else []
    if not names:
        names = sorted(
            {k for t in sweep["trials"] if t["role"] == "search" for k in t["config"]}
            - {"epochs", "steps_per_epoch", "batch_size"}
        )
    return ["algorithm", "fa", "la"] + [n for n in names if n not in ("algorithm", "fa", "la")]


def final_names(results: dict) -> list[str]:
    """The final retrain's configs in reading order: the recommendation, the references, the
    other finalists."""
    final = results.get("final") or {}
    chosen = (results.get("verdict") or {}).get("recommendation")
    first = [chosen] if chosen in final else []
    refs = [n for n in FINAL_ORDER if n in final and n not in first]
    return first + refs + sorted(set(final) - set(first) - set(refs))


def final_label(results: dict, name: str) -> str:
    chosen = (results.get("verdict") or {}).get("recommendation")
    label = FINAL_LABELS.get(name, name)
    return f"{label} (recommended)" if name == chosen else label


def final_table(sweep: dict) -> tuple[list[str], list[list], list[str]]:
    """The final retrain (mean ± std over seeds), the verdict and each finalist's paired
    difference to no distillation, as table and lines."""
    results = sweep["results"] or {}
    final = results.get("final") or {}
    verdict = results.get("verdict")
    cols = [
        "config", "test acc", "test balanced acc", "via teacher head", "val acc", "seeds",
        "test acc per seed",
    ]  # fmt: skip
    rows, lines = [], []
    if verdict and verdict.get("sentence"):
        lines.append(verdict["sentence"])
        if results.get("attribution"):
            lines.append(attribution_sentence(results["attribution"], sweep["metric"]))
        for name, c in (verdict.get("candidates") or {}).items():
            v, t = c["val"], c["test"]
            if v["n"] > 1:
                lines.append(
                    f"{name} vs no distillation, paired over {v['n']} seeds: "
                    f"{100 * v['mean']:+.2f} ± {100 * v['se']:.2f} validation, "
                    f"{100 * t['mean']:+.2f} ± {100 * t['se']:.2f} test "
                    f"(mean ± standard error){' — passes' if c['passes'] else ''}"
                )
    for name in final_names(results):
        e = final[name]
        rows.append(
            [
                final_label(results, name),
                _pm(e["test_acc_mean"], e["test_acc_std"]),
                _pm(e["test_bacc_mean"], e["test_bacc_std"]) if "test_bacc_mean" in e else "",
                _pm(e["test_acc_teacher_head_mean"], e["test_acc_teacher_head_std"]),
                _pm(e["val_acc_mean"], e["val_acc_std"]),
                len(e["runs"]),
                ", ".join(f"{100 * r['test_acc']:.1f}" for r in e["runs"]),
            ]
        )
    if "winner" in final and not verdict:  # a sweep from before verdicts were kept
        w = final["winner"]
        for ref in ("reference-ce", "reference-ucmkd"):
            if ref in final:
                r = final[ref]
                gain = 100 * (w["test_acc_mean"] - r["test_acc_mean"])
                # std of a difference of two independent means of n seeds each
                n = max(min(len(w["runs"]), len(r["runs"])), 1)
                se = 100 * math.sqrt((w["test_acc_std"] ** 2 + r["test_acc_std"] ** 2) / n)
                lines.append(
                    f"winner vs {FINAL_LABELS[ref]}: {gain:+.2f} test accuracy points "
                    f"(± {se:.2f} standard error over {n} seeds)"
                )
    return cols, rows, lines


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def importances(study) -> tuple[dict[str, dict[str, float]], list[str]]:
    """{evaluator: {param: importance}} over the completed searched trials, and notes on
    evaluators that could not run (too few trials, a single value per parameter, ...)."""
    import optuna
    from optuna.importance import (
        FanovaImportanceEvaluator,
        MeanDecreaseImpurityImportanceEvaluator,
    )

    evaluators = {
        "fANOVA": FanovaImportanceEvaluator(seed=0),
        "mean decrease impurity": MeanDecreaseImpurityImportanceEvaluator(seed=0),
    }
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return {}, [
            f"importance needs at least 2 completed searched trials; the sweep has {len(done)}"
        ]
    out, notes = {}, []
    # a two-objective study: the importance for the quality objective (the first)
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    for name, ev in evaluators.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(study, evaluator=ev, target=target)
        except (ValueError, RuntimeError) as e:
            notes.append(f"{name}: {e}")
            continue
        if imp:
            out[name] = dict(imp)
        else:
            notes.append(f"{name}: no parameter common to every completed trial")
    return out, notes


# ---------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def _top(sweep: dict, k: int) -> list[dict]:
    """The k best searched trials, then the references (always shown)."""
    searched = [t for t in sweep["trials"] if t["role"] == "search" and t["history"]][:k]
    refs = [t for t in sweep["trials"] if t["role"] != "search" and t["history"]]
    return searched + refs


def _style(t: dict, i: int) -> dict:
    if t["role"] in ROLE_COLOURS:
        return {"color": ROLE_COLOURS[t["role"]], "ls": "--", "label": t["role"]}
    return {"color": f"C{i % 10}", "ls": "-", "label": f"#{i + 1} {t['trial_id']}"}


def asha_rungs(max_epochs: int) -> list[int]:
    """Epochs at which the sweep's ASHA compares trials (grace max_t/4, reduction factor 2)."""
    rungs, r = [], max(1, max_epochs // 4)
    while r < max_epochs:
        rungs.append(r)
        r *= 2
    return rungs


def fig_leaderboard(sweep: dict, out: Path) -> Path:
    plt = _plt()
    trials = [t for t in sweep["trials"] if "best" in t]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(trials) + 1.5))
    colours = [ROLE_COLOURS.get(t["role"], "tab:blue") for t in trials]
    labels = [f"{t['role']} {t['trial_id']}" for t in trials]
    ax.barh(range(len(trials)), [t["best"] for t in trials], color=colours)
    ax.set_yticks(range(len(trials)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"best {sweep['metric']} over the epochs run")
    ax.set_title("leaderboard (references dark)")
    return _save(fig, out / "leaderboard.png")


def fig_final(sweep: dict, out: Path) -> Path | None:
    results = sweep["results"] or {}
    final = results.get("final") or {}
    names = final_names(results)
    if not names:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(names)), 4))
    for j, (key, label, colour) in enumerate(
        (
            ("test_acc", "test acc", "tab:blue"),
            ("test_acc_teacher_head", "via teacher head", "tab:orange"),
        )
    ):
        xs = [i + (j - 0.5) * 0.35 for i in range(len(names))]
        means = [100 * final[n][f"{key}_mean"] for n in names]
        stds = [100 * final[n][f"{key}_std"] for n in names]
        ax.bar(xs, means, width=0.35, yerr=stds, capsize=4, color=colour, alpha=0.7, label=label)
        for x, n in zip(xs, names, strict=True):
            seeds = [100 * r[key] for r in final[n]["runs"]]
            ax.scatter([x] * len(seeds), seeds, color="black", s=12, zorder=3)
    ax.set_xticks(
        range(len(names)),
        [final_label(results, n).replace(" (", "\n(") for n in names],
        fontsize=8,
    )
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("final retrain: mean ± std over seeds (dots: seeds)")
    ax.legend()
    return _save(fig, out / "final.png")


COST_LABELS = {
    "student_params": "student parameters",
    "student_latency_ms": "student latency (ms per batch)",
}


def fig_pareto(sweep: dict, out: Path) -> Path | None:
    """Every finished trial at (cost, quality), references in their colours; the Pareto front
    highlighted, numbered as ``pareto/<k>.yaml`` and joined as a staircase (what is attainable
    at each cost). None for a single-objective sweep."""
    results = sweep["results"] or {}
    objectives, points = results.get("objectives"), results.get("pareto")
    if not objectives or not points:
        return None
    quality = next(o["metric"] for o in objectives if o["metric"] not in COSTS)
    cost = next(o["metric"] for o in objectives if o["metric"] in COSTS)
    qk, ck = result_key(quality), result_key(cost)
    trials = [
        t for t in results.get("trials", []) if t.get("error") is None and qk in t and ck in t
    ]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    for role in sorted({t["role"] for t in trials}):
        mine = [t for t in trials if t["role"] == role]
        ax.scatter(
            [t[ck] for t in mine],
            [t[qk] for t in mine],
            s=40,
            alpha=0.6,
            color=ROLE_COLOURS.get(role, "tab:blue"),
            label="searched trials" if role == "search" else role,
            zorder=2,
        )
    px = [p["values"][cost] for p in points]
    py = [p["values"][quality] for p in points]
    ax.step(px, py, where="post", color="tab:red", lw=2, zorder=3)
    ax.scatter(px, py, s=110, color="tab:red", edgecolor="black", zorder=4, label="Pareto front")
    at: dict[tuple, list[str]] = {}  # tied points share one label
    for k, xy in enumerate(zip(px, py, strict=True)):
        at.setdefault(xy, []).append(str(k))
    for xy, ks in at.items():
        ax.annotate(",".join(ks), xy, xytext=(6, -12), textcoords="offset points", fontsize=9)
    again = [p for p in points if "fresh_seeds" in p]
    if again:
        ax.errorbar(
            [p["values"][cost] for p in again],
            [p["fresh_seeds"][f"{quality}_mean"] for p in again],
            yerr=[p["fresh_seeds"][f"{quality}_std"] for p in again],
            fmt="D",
            color="tab:green",
            capsize=4,
            zorder=5,
            label="front retrained on fresh seeds (mean ± std)",
        )
    xs = [t[ck] for t in trials] + px
    if min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_xlabel(COST_LABELS.get(cost, cost) + " (lower is cheaper)")
    ax.set_ylabel(f"best {quality}")
    ax.grid(alpha=0.3)
    ax.set_title(f"{quality} against {cost}: {len(points)} of {len(trials)} trials on the front")
    ax.legend(fontsize=8)
    return _save(fig, out / "pareto.png")


def fig_importance(imps: dict[str, dict[str, float]], out: Path) -> Path | None:
    if not imps:
        return None
    plt = _plt()
    params = sorted(
        {p for v in imps.values() for p in v},
        key=lambda p: -max(v.get(p, 0) for v in imps.values()),
    )
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(params) + 1.5))
    h = 0.8 / len(imps)
    for j, (name, imp) in enumerate(imps.items()):
        ax.barh(
            [i + j * h for i in range(len(params))],
            [imp.get(p, 0.0) for p in params],
            height=h,
            color=f"C{j}",
            label=name,
        )
    ax.set_yticks([i + h * (len(imps) - 1) / 2 for i in range(len(params))], params)
    ax.invert_yaxis()
    ax.set_xlabel("importance (share of the variance of the objective)")
    ax.legend()
    ax.set_title("hyperparameter importance over the searched trials")
    return _save(fig, out / "importance.png")


def fig_parallel(sweep: dict, study, out: Path) -> Path | None:
    """One line per searched trial across its parameters (each axis scaled to its range; log
    axes in log; categories spread evenly; 'n/a' below the axis when a parameter was inactive),
    coloured by the objective."""
    import numpy as np
    from optuna.distributions import CategoricalDistribution

    trials = [t for t in study.trials if t.values is not None]
    quality = {t.number: t.values[0] for t in trials}  # the first objective with two
    dists: dict = {}
    for t in trials:
        dists.update(t.distributions)
    if not trials or not dists:
        return None
    plt = _plt()
    names = list(dists)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * (len(names) + 1)), 4.5))
    values = np.array([quality[t.number] for t in trials])
    lo, hi = values.min(), values.max()
    cmap = plt.get_cmap("viridis")

    def pos(name, v):
        d = dists[name]
        if v is None:
            return -0.15
        if isinstance(d, CategoricalDistribution):
            return d.choices.index(v) / max(len(d.choices) - 1, 1)
        a, b = (math.log(d.low), math.log(d.high)) if d.log else (d.low, d.high)
        x = math.log(v) if d.log else v
        return (x - a) / (b - a) if b > a else 0.5

    for t in sorted(trials, key=lambda t: quality[t.number]):
        v = quality[t.number]
        ys = [pos(n, t.params.get(n)) for n in names] + [(v - lo) / (hi - lo) if hi > lo else 0.5]
        c = cmap((v - lo) / (hi - lo) if hi > lo else 0.5)
        ax.plot(range(len(names) + 1), ys, color=c, lw=2, alpha=0.85, marker="o")
    for i, n in enumerate(names):
        d = dists[n]
        if isinstance(d, CategoricalDistribution):
            for k, c in enumerate(d.choices):
                ax.annotate(
                    str(c),
                    (i, k / max(len(d.choices) - 1, 1)),
                    fontsize=7,
                    xytext=(3, 0),
                    textcoords="offset points",
                )
        else:
            for y, v in ((0, d.low), (1, d.high)):
                ax.annotate(
                    f"{v:.3g}", (i, y), fontsize=7, xytext=(3, 0), textcoords="offset points"
                )
    ax.annotate(f"{lo:.3g}", (len(names), 0), fontsize=7, xytext=(3, 0), textcoords="offset points")
    ax.annotate(f"{hi:.3g}", (len(names), 1), fontsize=7, xytext=(3, 0), textcoords="offset points")
    for i in range(len(names) + 1):
        ax.axvline(i, color="0.7", lw=0.8, zorder=0)
    ax.set_xticks(range(len(names) + 1), [*names, sweep["metric"]], rotation=20)
    ax.set_yticks([-0.15, 0, 1], ["n/a", "low", "high"])
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=ax, label=f"best {sweep['metric']}")
    ax.set_title("parallel coordinates of the searched trials")
    return _save(fig, out / "parallel.png")


def fig_curves(sweep: dict, out: Path, top: int) -> Path:
    plt = _plt()
    metric, max_epochs = sweep["metric"], sweep["max_epochs"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in asha_rungs(max_epochs):
        ax.axvline(r, color="0.8", ls=":", zorder=0)
    stopped_label = "stopped by ASHA"
    for i, t in enumerate(_top(sweep, top)):
        ep = [h["epoch"] for h in t["history"] if metric in h]
        ys = [h[metric] for h in t["history"] if metric in h]
        ax.plot(ep, ys, marker=".", **_style(t, i))
        if t["role"] == "search" and 0 < t["epochs_run"] < max_epochs:
            ax.scatter(
                [ep[-1]], [ys[-1]], marker="X", s=90, color="red", zorder=4, label=stopped_label
            )
            stopped_label = None
    ax.set_xlabel("epoch (dotted: ASHA rungs)")
    ax.set_ylabel(metric)
    ax.set_xlim(0.5, max_epochs + 0.5)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"learning curves of the top {top} searched trials and the references")
    return _save(fig, out / "curves.png")


ALIGNMENT = (
    ("train_fa", "feature alignment term (train)"),
    ("train_la", "label alignment term (train)"),
    ("val_acc_teacher_head", "teacher head reading student features (val acc)"),
)


def fig_alignment(sweep: dict, out: Path, top: int) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (key, title) in zip(axes, ALIGNMENT, strict=True):
        drawn = 0
        for i, t in enumerate(_top(sweep, top)):
            pts = [
                (h["epoch"], h[key]) for h in t["history"] if isinstance(h.get(key), (int, float))
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", **_style(t, i))
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "not reported by these trials", ha="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.suptitle("the paper's two quantities over training (each trial's own FA/LA definition)")
    return _save(fig, out / "alignment.png")


# ---------------------------------------------------------------- HTML


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def html_table(cols: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%;margin:0.5em 0}
code{background:#f4f4f4;padding:1px 4px}.note{color:#555;font-size:13px}"""


def render_html(
    sweep: dict, figs: dict, tables: dict, notes: dict, study_path: Path, out: Path
) -> Path:
    res = sweep["results"] or {}
    meta = ", ".join(
        f"{k} {res[k]}" for k in ("benchmark", "student", "teacher", "labels_per_class") if k in res
    )
    n_search = sum(t["role"] == "search" for t in sweep["trials"])
    n_stopped = sum(
        t["role"] == "search" and 0 < t["epochs_run"] < sweep["max_epochs"] for t in sweep["trials"]
    )

    def img(key: str) -> str:
        return f'<img src="{figs[key].name}" alt="{key}">' if figs.get(key) else ""

    final_cols, final_rows, final_lines = tables["final"]
    pareto = []
    if tables["pareto"][1]:
        names = [o["metric"] for o in res["objectives"]]
        pareto = [
            f"<h2>Pareto front: {' against '.join(names)}</h2>",
            "<p class=note>the trials no other trial beats on one objective without losing on "
            "the other, cheapest first; each is a runnable experiment "
            f"(<code>python -m cmkd.train --config {html.escape(str(sweep['dir']))}/pareto/K.yaml"
            "</code>). The front is chosen on the trials' own values (the search's seed, the "
            "best of several: optimistic); no trial was stopped early. Where the front was "
            "retrained on fresh seeds, their mean ± std is shown beside it (green in the "
            "figure), and a point another beats there is marked off the front.</p>",
            html_table(*tables["pareto"]),
            img("pareto"),
        ]
    sections = [
        f"<h1>Sweep {html.escape(sweep['name'])}</h1>",
        f"<p>{html.escape(meta)}. {n_search} searched trials ({n_stopped} stopped early by ASHA) "
        f"and {len(sweep['trials']) - n_search} reference trials; metric {sweep['metric']} "
        f"({sweep['mode']}), up to {sweep['max_epochs']} epochs. Folder: "
        f"<code>{html.escape(str(sweep['dir']))}</code>.</p>",
        *pareto,
        "<h2>Final retrain: the front's points on fresh seeds</h2>"
        if res.get("objectives")
        else "<h2>Verdict: the finalists against the references (final retrain, fresh seeds)</h2>",
        html_table(final_cols, final_rows)
        if final_rows
        else "<p class=note>no final retrain "
        "in this sweep (results.json missing, --final-seeds 0, or two objectives)</p>",
        "".join(f"<p><b>{html.escape(line)}</b></p>" for line in final_lines),
        img("final"),
        "<h2>Leaderboard</h2>",
        "<p class=note>best validation metric over the epochs each trial ran; ASHA ranks "
        "trials at its rungs, so a stopped trial's score is over fewer epochs.</p>",
        html_table(*tables["leaderboard"]),
        img("leaderboard"),
        "<h2>Hyperparameter importance</h2>",
        html_table(*tables["importance"]) if tables["importance"][1] else "",
        "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes["importance"]),
        "<p class=note>Optuna's importance evaluators over the completed searched trials "
        "(parameters every such trial has; a conditional parameter is left out). Few trials "
        "make these rough.</p>",
        img("importance"),
        "<h2>Parallel coordinates</h2>",
        img("parallel"),
        "<h2>Learning curves</h2>",
        img("curves"),
        "<h2>Feature and label alignment over training</h2>",
        "<p class=note>the mean FA and LA loss terms of each epoch and the validation accuracy "
        "of the teacher head read on the student's features. FA and LA values are in each "
        "trial's own definition (Sinkhorn, MMD, teacher CE, KL...), comparable along one "
        "curve, not always between trials.</p>",
        img("alignment"),
        "<h2>Optuna study</h2>",
        f"<p>The searched trials are kept as an Optuna study (JournalStorage file): "
        f"<code>{html.escape(str(study_path))}</code>. Open it with "
        f"<code>pip install optuna-dashboard; optuna-dashboard {html.escape(str(study_path))}</code>, "
        "or in Python with <code>optuna.load_study(study_name=..., storage=JournalStorage("
        "JournalFileBackend(path)))</code>.</p>",
    ]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>cmkd sweep "
        f"{html.escape(sweep['name'])}</title><style>{CSS}</style></head><body>"
        + "\n".join(s for s in sections if s)
        + "</body></html>"
    )
    path = out / "index.html"
    path.write_text(page)
    return path


# ---------------------------------------------------------------- W&B


def log_to_wandb(mode: str, project: str, sweep: dict, tables: dict, figs: dict, out: Path) -> str:
    """The report's tables and figures as one W&B run (job_type report). Offline writes only
    to ``out/wandb`` and never waits on the network."""
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        print("warning: --wandb online but WANDB_API_KEY is not set; logging offline instead")
        mode = "offline"
    from cmkd.tune import keep_wandb_in

    base = out / "wandb"
    keep_wandb_in(base)
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run = wandb.init(
        project=project,
        group=sweep["name"],
        name=f"{sweep['name']}-report",
        job_type="report",
        mode=mode,
        dir=str(base),
        settings=wandb.Settings(init_timeout=60, silent=True),
    )
    payload = {}
    for key, value in tables.items():
        cols, rows = value[0], value[1]
        if rows:
            # a W&B column holds one type: numbers stay numbers only where all of it is numeric
            numeric = [
                all(isinstance(r[j], (int, float)) and not isinstance(r[j], bool) for r in rows)
                for j in range(len(cols))
            ]
            data = [[v if numeric[j] else _wandb_cell(v) for j, v in enumerate(r)] for r in rows]
            payload[key] = wandb.Table(columns=cols, data=data)
    for key, path in figs.items():
        if path:
            payload[f"figure/{key}"] = wandb.Image(str(path))
    run.log(payload)
    where = run.dir
    run.finish()
    return f"W&B ({mode}): project {project!r}, run {sweep['name']}-report" + (
        f"; sync later with `wandb sync {Path(where).parent}`" if mode == "offline" else ""
    )


def _wandb_cell(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


# ---------------------------------------------------------------- the command


def make_report(
    sweep_path: str | Path,
    out: str | Path | None = None,
    *,
    wandb_mode: str = "disabled",
    project: str = "cmkd",
    top: int = 5,
) -> Path:
    """Write the report of the sweep at ``sweep_path`` and return the HTML file's path."""
    sweep_path = str(sweep_path)
    remote = "://" in sweep_path
    if not remote and not Path(sweep_path).is_dir():
        raise FileNotFoundError(f"{sweep_path}: no such sweep folder")
    if out is None:
        name = sweep_path.rstrip("/").rsplit("/", 1)[-1]
        out = Path("runs") / name / "report" if remote else Path(sweep_path) / "report"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    local = (
        fetch(sweep_path, Path(tempfile.mkdtemp(prefix="cmkd-report-")) / "sweep")
        if remote
        else Path(sweep_path)
    )
    study_path = export_study(local)
    if remote:  # the study lives beside the report; the bucket is never written to
        study_path = Path(shutil.copy(study_path, out / STUDY_FILE))
    sweep = load_sweep(local)
    study = to_study(sweep)
    imps, imp_notes = importances(study)
    params = sorted({p for v in imps.values() for p in v})
    tables = {
        "leaderboard": leaderboard(sweep),
        "final": final_table(sweep),
        "pareto": pareto_table(sweep),
        "importance": (
            ["parameter", *imps],
            [[p, *[imps[e].get(p, "") for e in imps]] for p in params],
        ),
    }
    figs = {
        "final": fig_final(sweep, out),
        "pareto": fig_pareto(sweep, out),
        "leaderboard": fig_leaderboard(sweep, out),
        "importance": fig_importance(imps, out),
        "parallel": fig_parallel(sweep, study, out),
        "curves": fig_curves(sweep, out, top),
        "alignment": fig_alignment(sweep, out, top),
    }
    page = render_html(sweep, figs, tables, {"importance": imp_notes}, study_path, out)
    if wandb_mode != "disabled":
        print(log_to_wandb(wandb_mode, project, sweep, tables, figs, out))
    if remote:
        shutil.rmtree(local.parent, ignore_errors=True)
    return page


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and validate the command line, reading nothing: a bad value exits 2 (cmkd.cli)."""
    p = cli.parser("python -m cmkd.report", __doc__)
    p.add_argument("sweep", help="the sweep's storage folder (runs/NAME), or s3://... / gs://...")
    p.add_argument(
        "--out",
        help="report folder (default: SWEEP/report, or runs/NAME/report for a remote sweep)",
    )
    p.add_argument(
        "--top",
        type=cli.positive_int,
        default=5,
        help="searched trials drawn in the curves (default 5)",
    )
    p.add_argument(
        "--wandb",
        choices=("online", "offline", "disabled"),
        default="disabled",
        help="also log the tables and figures to W&B (default disabled)",
    )
    p.add_argument("--wandb-project", default="cmkd")
    args = p.parse_args(argv)
    if "://" not in args.sweep and not Path(args.sweep).is_dir():
        cli.fail(
            f"sweep {args.sweep!r}: no such sweep folder (expected a sweep's storage folder, "
            "runs/NAME, or an s3:// / gs:// URI)"
        )
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        cli.fail(f"--out {args.out!r}: a file is there, expected a folder for the report")
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # a bad argument, already said on stderr (or --help)
        return e.code
    try:
        page = make_report(
            args.sweep, args.out, wandb_mode=args.wandb, project=args.wandb_project, top=args.top
        )
    except (FileNotFoundError, ValueError) as e:  # what only the sweep's files can tell
        return cli.error(str(e))
    study = page.parent / STUDY_FILE
    study = study if study.is_file() else Path(args.sweep) / STUDY_FILE
    print(f"report written to {page}")
    print(f"Optuna study: {study} (open it with `optuna-dashboard {study}`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
