"""python -m cmkd.data: build, the build cache, determinism, validate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cmkd.data import read_meta
from cmkd.data.__main__ import main

SMALL_SYNTH = ["--train-per-class", "20", "--val-per-class", "5", "--test-per-class", "10"]
TINY_AVDIGITS = ["--languages", "en,fr", "--variants", "m1,f2,m3", "--repeats", "1"]
TINY_AVDIGITS += ["--images-per-class", "10", "--pool-clips", "20"]


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_build_synth_prints_sizes_and_time(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["build", "synth", "--out", str(tmp_path / "s"), *SMALL_SYNTH]) == 0
    out = capsys.readouterr().out
    assert "a_train.parquet" in out and "200 rows" in out and "MB" in out
    assert "built synth (seed 0) in" in out
    assert sorted(_files(tmp_path / "s")) == sorted(
        ["meta.json"]
        + [f"{m}_{s}.parquet" for m in "ab" for s in ("train", "val", "test", "unlabelled")]
    )


def test_synth_build_is_deterministic_by_seed(tmp_path: Path) -> None:
    for name, seed in (("one", "3"), ("two", "3"), ("other", "4")):
        args = ["build", "synth-nohelp", "--out", str(tmp_path / name), "--seed", seed]
        assert main(args + SMALL_SYNTH) == 0
    one, two, other = (_files(tmp_path / n) for n in ("one", "two", "other"))
    assert one == two
    assert one["a_train.parquet"] != other["a_train.parquet"]


def test_avdigits_tiny_build_is_deterministic(tmp_path: Path) -> None:
    for name in ("one", "two"):
        assert main(["build", "avdigits", "--out", str(tmp_path / name), *TINY_AVDIGITS]) == 0
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(one) == 8  # meta.json, 6 labelled splits, the audio pool
    assert one == two
    assert read_meta(tmp_path / "one").params["options"]["languages"] == ["en", "fr"]


def test_build_directory_is_a_cache(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "s")
    assert main(["build", "synth", "--out", out, *SMALL_SYNTH]) == 0
    before = _files(tmp_path / "s")
    capsys.readouterr()
    assert main(["build", "synth", "--out", out, *SMALL_SYNTH]) == 0
    assert "already built" in capsys.readouterr().out
    assert main(["build", "synth", "--out", out, "--shared", "4", *SMALL_SYNTH]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert _files(tmp_path / "s") == before
    assert main(["build", "synth", "--out", out, "--force", "--shared", "4", *SMALL_SYNTH]) == 0
    assert read_meta(out).params["shared"] == 4
    assert _files(tmp_path / "s")["a_train.parquet"] != before["a_train.parquet"]


def test_validate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s"
    main(["build", "synth", "--out", str(out), *SMALL_SYNTH])
    capsys.readouterr()
    assert main(["validate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "synth, 10 classes, seed 0" in printed and "train    200 rows, 10 classes" in printed
    assert printed.strip().endswith("ok")
    (out / "b_val.parquet").unlink()
    assert main(["validate", str(out)]) == 1
    assert f"{out / 'b_val.parquet'}: missing file" in capsys.readouterr().err
    assert main(["validate", str(out), "--modalities", "a"]) == 0


def test_help_names_every_benchmark(capsys: pytest.CaptureFixture) -> None:
    assert main(["build", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("synth", "synth-nohelp", "avdigits"))


def test_runs_as_a_module(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "cmkd.data", "build", "synth", "--out", str(tmp_path)]
    done = subprocess.run(cmd + SMALL_SYNTH, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "built synth" in done.stdout


def test_library_build_is_recognised(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cmkd.data.synth import build_synth

    build_synth(tmp_path, "synth", seed=0, train_per_class=20, val_per_class=5, test_per_class=10)
    assert main(["build", "synth", "--out", str(tmp_path), *SMALL_SYNTH]) == 0
    assert "already built" in capsys.readouterr().out
