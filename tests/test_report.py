"""The sweep report and the Optuna study, rendered from a small recorded sweep.

tests/fixtures/sweep-rec is a real smoke sweep (6 searched + 2 reference trials, ASHA, final
retrain with 3 seeds) trimmed to its text files; benchmarks/record_sweep.py recorded it.
"""

import html
import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib import image as mpimg
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from cmkd import report
from cmkd.study import STUDY_FILE, export_study, load_sweep

FIXTURE = Path(__file__).parent / "fixtures" / "sweep-rec"
FIGURES = ("final", "leaderboard", "importance", "parallel", "curves", "alignment")


@pytest.fixture
def sweep(tmp_path):
    return Path(shutil.copytree(FIXTURE, tmp_path / "rec"))


def test_fixture_is_small_text_only():
    files = [f for f in FIXTURE.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 1_000_000
    assert {f.suffix for f in files} <= {".json", ".csv", ".yaml", ".md"}


def assert_not_blank(png: Path) -> None:
    px = mpimg.imread(png)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert px.shape[0] > 200 and px.shape[1] > 300, px.shape
    assert px.std() > 0.05, f"{png.name}: nearly uniform (std {px.std():.3f})"
    colours = np.unique((px * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20, f"{png.name}: only {len(colours)} distinct colours"
    assert (px < 0.9).any(axis=-1).mean() > 0.01, f"{png.name}: almost nothing drawn"


def test_report_renders_every_section_and_figure(sweep, capsys):
    assert report.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    page = sweep / "report" / "index.html"
    assert f"report written to {page}" in out and f"optuna-dashboard {sweep / STUDY_FILE}" in out
    text = page.read_text()
    for heading in (
        "Leaderboard",
        "Verdict: the finalists against the references",
        "Hyperparameter importance",
        "Parallel coordinates",
        "Learning curves",
        "Feature and label alignment",
        "Optuna study",
    ):
        assert heading in text
    results = json.loads((sweep / "results.json").read_text())
    for t in results["trials"]:  # every trial is on the leaderboard
        assert t["trial_id"] in text
    verdict = results["verdict"]["sentence"]
    assert html.escape(verdict) in text and "vs no distillation, paired over" in text
    for name in FIGURES:
        png = sweep / "report" / f"{name}.png"
        assert f'src="{name}.png"' in text
        assert_not_blank(png)


def test_blank_png_is_caught(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    fig.savefig(tmp_path / "blank.png")
    plt.close(fig)
    with pytest.raises(AssertionError):
        assert_not_blank(tmp_path / "blank.png")


def test_final_table_leads_with_the_verdict_and_the_recommendation(sweep):
    s = load_sweep(sweep)
    results = s["results"]
    final, verdict = results["final"], results["verdict"]
    _, rows, lines = report.final_table(s)
    assert lines[0] == verdict["sentence"]
    assert rows[0][0] == report.final_label(results, verdict["recommendation"])
    assert "(recommended)" in rows[0][0] and len(rows) == len(final)
    for name, c in verdict["candidates"].items():  # each finalist's paired difference, as kept
        assert f"{name} vs no distillation, paired over {c['val']['n']} seeds: " + (
            f"{100 * c['val']['mean']:+.2f}"
        ) in "\n".join(lines)


def test_asha_stopping_points_and_rungs(sweep):
    s = load_sweep(sweep)
    assert report.asha_rungs(4) == [1, 2] and report.asha_rungs(10) == [2, 4, 8]
    stopped = [t for t in s["trials"] if t["role"] == "search" and t["epochs_run"] < 4]
    assert stopped, "the recorded sweep should hold a trial ASHA stopped"
    _, rows = report.leaderboard(s)
    assert sum("(ASHA)" in str(r[5]) for r in rows) == len(stopped)
    assert all(t["epochs_run"] == 4 for t in s["trials"] if t["role"] != "search")


def test_study_is_an_optuna_journal_and_export_is_idempotent(sweep):
    path = export_study(sweep)
    first = path.read_bytes()
    assert export_study(sweep) == path
    s = load_sweep(sweep)
    study = optuna.load_study(
        study_name=s["name"], storage=JournalStorage(JournalFileBackend(str(path)))
    )
    assert len(study.trials) == 6  # the searched trials; references are study attributes
    assert any(k.startswith("reference-ce") for k in study.user_attrs)
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    for t in s["trials"]:
        if t["role"] == "search":
            assert by_id[t["trial_id"]].value == pytest.approx(t["best"])
            assert len(by_id[t["trial_id"]].intermediate_values) == t["epochs_run"]
    assert study.best_value == max(t["best"] for t in s["trials"] if t["role"] == "search")
    again = optuna.load_study(
        study_name=s["name"], storage=JournalStorage(JournalFileBackend(str(path)))
    )
    assert len(again.trials) == 6 and len(path.read_bytes()) == len(first)


def test_importance_over_the_searched_parameters(sweep):
    s = load_sweep(sweep)
    imps, notes = report.importances(report.to_study(s))
    assert imps, notes
    for imp in imps.values():
        assert set(imp) <= set(s["space"].names)
        assert sum(imp.values()) == pytest.approx(1.0, abs=1e-6)


def test_remote_sweep_is_fetched_through_pyarrow_fs(sweep, tmp_path):
    dest = report.fetch(f"file://{sweep}", tmp_path / "copy")
    assert (dest / "results.json").is_file()
    assert len(list(dest.glob("*/progress.csv"))) == 8
    with pytest.raises(FileNotFoundError, match="cannot list the sweep|no sweep files"):
        report.fetch(f"file://{tmp_path}/absent", tmp_path / "copy2")


def test_missing_sweep_is_a_clear_error(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "no such sweep folder" in capsys.readouterr().err


def test_wandb_offline_logs_the_report_without_network(sweep, monkeypatch):
    for k in (
        "WANDB_DIR",
        "WANDB_CACHE_DIR",
        "WANDB_CONFIG_DIR",
        "WANDB_DATA_DIR",
        "WANDB_API_KEY",
    ):
        monkeypatch.setenv(k, "")  # recorded, so the test leaves the environment as it was
        monkeypatch.delenv(k)
    monkeypatch.setenv("WANDB_MODE", "offline")
    page = report.make_report(sweep, wandb_mode="offline")
    runs = list((page.parent / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(f.suffix == ".wandb" and f.stat().st_size > 0 for f in runs[0].iterdir())


def test_report_of_a_sweep_without_results_json(sweep):
    """While a sweep runs there is no results.json: the report still renders from the trial
    folders, with the space's parameters inferred from the values the trials took."""
    (sweep / "results.json").unlink()
    text = report.make_report(sweep).read_text()
    assert "no final retrain" in text
    s = load_sweep(sweep)
    assert s["space"] is None and s["max_epochs"] == 4
    study = report.to_study(s)
    assert len(study.trials) == 6
    assert {"w_fa", "mmd_multiplier", "la"} <= set(study.trials[0].distributions)
    assert_not_blank(sweep / "report" / "parallel.png")
