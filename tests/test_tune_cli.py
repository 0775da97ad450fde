"""`python -m cmkd.tune` refuses bad input before any Ray work, naming what to fix."""

import os

import pytest

from cmkd import tune
from cmkd.trial import Resources, for_machine


@pytest.fixture()
def synth(tmp_path):
    from cmkd.data.synth import build_synth

    out = tmp_path / "synth"
    build_synth(out, "synth", train_per_class=20, val_per_class=5, test_per_class=5)
    return out


def run(capsys, *argv):
    code = tune.main(list(argv))
    return code, capsys.readouterr().err


def test_unknown_space_is_named_with_the_available_ones(capsys, tmp_path):
    code, err = run(capsys, "--space", "defualt", "--storage", str(tmp_path))
    assert (
        code == 2 and "no search space named 'defualt'" in err and "did you mean 'default'" in err
    )


def test_bad_space_file_is_named(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  w_fa: {loguniform: [0, 1]}\n")
    code, err = run(capsys, "--space", str(bad), "--storage", str(tmp_path))
    assert code == 2 and "bad.yaml: params.w_fa.loguniform: low must be > 0" in err


def test_unwritable_storage_is_refused(capsys, tmp_path, synth):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = run(
        capsys, "--space", "smoke", "--benchmark", str(synth), "--storage", str(blocker / "runs")
    )
    assert code == 2 and "cannot write there" in err


def test_existing_sweep_needs_resume_or_a_new_name(capsys, tmp_path, synth):
    (tmp_path / "taken").mkdir()
    code, err = run(
        capsys,
        "--space",
        "smoke",
        "--benchmark",
        str(synth),
        "--storage",
        str(tmp_path),
        "--name",
        "taken",
    )
    assert code == 2 and "already exists" in err and "--resume" in err


def test_missing_benchmark_folder_is_named(capsys, tmp_path):
    code, err = run(
        capsys,
        "--space",
        "smoke",
        "--benchmark",
        str(tmp_path / "nope"),
        "--storage",
        str(tmp_path),
    )
    assert code == 2 and "not a built-in" in err and "nope" in err


def test_bad_labels_per_class_is_named(capsys, tmp_path, synth):
    code, err = run(
        capsys,
        "--space",
        "smoke",
        "--benchmark",
        str(synth),
        "--storage",
        str(tmp_path),
        "--labels-per-class",
        "lots",
    )
    assert code == 2 and "--labels-per-class" in err


def test_resources_fit_a_two_cpu_machine():
    two = {"CPU": 2.0}
    one_worker = for_machine(two, 1, 0.0, None)
    assert one_worker.cpus_per_worker == 1.0 and one_worker.concurrency(two) == 2
    two_workers = for_machine(two, 2, 0.0, None)  # 2 workers on 2 CPUs: half a CPU each, 2 trials
    assert two_workers.cpus_per_worker == 0.5 and two_workers.concurrency(two) == 2
    assert "CPU" not in Resources().trial_request  # the waiting trial actor holds no CPU
    assert one_worker.trial_request == {"memory": 1}
    # Launcher clusters mark their non-preemptible nodes: trial actors ask for a sliver of it.
    marked = for_machine({"CPU": 8.0, "GPU": 4.0, "cmkd_driver": 3.0}, 1, 1.0, None)
    assert marked.trial_request == {"memory": 1, "cmkd_driver": 0.001}
    # A one-worker trial that trains in its own process holds its worker's share itself, and
    # goes where the GPUs are (not kept to the driver nodes).
    assert one_worker.local_request == {"CPU": 1.0}
    assert marked.local_request == {"CPU": 1.0, "GPU": 1.0}
    gpus = for_machine({"CPU": 16.0, "GPU": 4.0}, 2, 1.0, None)
    assert gpus.concurrency({"CPU": 16.0, "GPU": 4.0}) == 2
    with pytest.raises(ValueError, match="fractional GPUs break DDP"):
        for_machine(two, 2, 0.5, None)


def test_local_cluster_runs_no_preemption_watcher(monkeypatch):
    import ray

    from cmkd import sweep

    class Started(Exception):
        pass

    seen = []

    def init(**kwargs):
        seen.append(kwargs)
        raise Started

    monkeypatch.setattr(sweep, "ray_env", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    with pytest.raises(Started):
        sweep.run_sweep(tune.parse_args([]), None, None, None, "n", "/nowhere", 0.0)
    # a one-machine cluster has no other node to lose: no watcher actor per trial
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    # the dashboard stays: Train's placement group cleaner needs the State API it serves
    assert "include_dashboard" not in seen[-1]


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        (
            "--num-samples",
            "-1",
            "--num-samples -1: expected searched trials (0: the references only), a number >= 0",
        ),
        ("--final-seeds", "-1", "--final-seeds -1: expected seeds of the final retrain"),
        ("--max-concurrent", "0", "--max-concurrent 0: expected trials at once"),
        ("--workers-per-trial", "0", "--workers-per-trial 0: expected Train workers"),
        ("--gpus-per-worker", "-1", "--gpus-per-worker -1: expected GPUs per worker"),
        ("--cpus-per-worker", "0", "--cpus-per-worker 0: expected CPUs per worker"),
        ("--labels-per-class", "0", "--labels-per-class '0': expected a whole number"),
        ("--val-per-class", "0", "--val-per-class '0': expected a whole number"),
        ("--name", "../../escape", "--name '../../escape': a sweep name is letters"),
        ("--name", "/abs", "--name '/abs': a sweep name"),
        ("--name", "a/b", "--name 'a/b': a sweep name"),
    ],
)
def test_a_bad_flag_is_one_error_line_and_nothing_is_written(
    capsys, tmp_path, synth, flag, value, expected
):
    storage = tmp_path / "runs"
    code = tune.main(
        ["--space", "smoke", "--benchmark", str(synth), "--storage", str(storage), flag, value]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not storage.exists() or not any(storage.iterdir())


NUMERIC_FLAGS = (
    "--num-samples",
    "--final-seeds",
    "--max-concurrent",
    "--workers-per-trial",
    "--gpus-per-worker",
    "--cpus-per-worker",
    "--epochs",
    "--seed",
    "--labels-per-class",
    "--val-per-class",
    "--time-budget",
    "--stream-above-mb",
)
ODD = ("", "-", "nan", "inf", "-inf", "1e999", "../x", "/etc", "0x10", " 3", "all", "split")


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory):
    from cmkd.data.synth import build_synth
    from cmkd.train import ensure_bank

    out = tmp_path_factory.mktemp("bench") / "synth"
    build_synth(out, "synth", train_per_class=20, val_per_class=5, test_per_class=5)
    ensure_bank(out, "a", log=lambda *_: None)  # the teacher, once for every example
    return out


def test_every_numeric_flag_is_valid_or_one_error_line_naming_it(prebuilt, tmp_path_factory):
    """Generated values for every numeric flag of `python -m cmkd.tune --check`: either the
    sweep would run (exit 0, nothing started), or exit 2 with one `error:` line naming the
    flag, no traceback, nothing written under the storage path."""
    import contextlib
    import io

    from hypothesis import given, settings
    from hypothesis import strategies as st

    values = st.one_of(
        st.integers(-(10**6), 10**6).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(ODD),
    )

    @settings(max_examples=30, deadline=None)
    @given(flag=st.sampled_from(NUMERIC_FLAGS), value=values)
    def check(flag, value):
        storage = tmp_path_factory.mktemp("storage")
        argv = ["--space", "smoke", "--benchmark", str(prebuilt), "--storage", str(storage)]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = tune.main([*argv, "--check", f"{flag}={value}"])
            except SystemExit as e:  # argparse's own refusals (a type it cannot parse)
                code = e.code
        lines = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
        assert "Traceback" not in err.getvalue() + out.getvalue()
        if code == 0:
            assert "ok: sweep" in out.getvalue()
            return
        assert code == 2, (flag, value, err.getvalue())
        assert len(lines) == 1 and flag in lines[0], (flag, value, err.getvalue())
        assert not any(storage.iterdir()), (flag, value)

    check()


def test_auto_space_follows_the_pool(tmp_path, synth):
    """--space auto (the default) is the pool space when the student has an unlabelled pool:
    a built-in benchmark (all build one) or a folder with {student}_unlabelled.parquet; the
    default space without one, or with --unlabelled 0; a named space is kept."""
    from cmkd.data.synth import build_synth

    nopool = tmp_path / "nopool"
    build_synth(nopool, "synth", train_per_class=5, val_per_class=2, test_per_class=2,
                pool_per_class=0)  # fmt: skip

    def space(*argv):
        return tune.auto_space(tune.parse_args(list(argv)))

    assert tune.parse_args([]).space == "auto" and tune.parse_args([]).benchmark == "sonified"
    assert space() == "pool"
    assert space("--benchmark", "avdigits") == "pool"
    assert space("--benchmark", str(synth)) == "pool"
    assert space("--benchmark", str(nopool)) == "default"
    assert space("--unlabelled", "0") == "default"
    assert space("--space", "smoke") == "smoke"
    # the sweep's folder is named after the space it resolved to
    args = tune.parse_args(["--benchmark", str(synth)])
    args.space = tune.auto_space(args)
    assert tune.sweep_name(args) == "synth-pool-5lpc-s0"


def test_validation_rows_default_to_the_space(tmp_path, capsys):
    """--val-per-class unset: the space's val_per_class (pool: 25, enough to resolve a few
    points), else 10; the flag wins over both."""
    from cmkd.data.synth import build_synth
    from cmkd.space import load_space

    assert load_space("pool").val_per_class == 25 and load_space("default").val_per_class is None
    bench = tmp_path / "synth"
    build_synth(bench, "synth", train_per_class=32, val_per_class=2, test_per_class=2)

    def val_per_class(*argv):
        assert tune.main(["--benchmark", str(bench), *argv, "--check"]) == 0
        out = capsys.readouterr().out  # "... student (N labelled, M validation rows) ..."
        labelled, val = out.split(" labelled, ")[0].split("(")[-1], out.split(" labelled, ")[1]
        return int(val.split()[0]) / (int(labelled) / 5)

    assert val_per_class() == 25
    # synth's pool and balanced bank: ce, the paper defaults and ssl_only (ssl_prior is ssl_only)
    assert tune.main(["--benchmark", str(bench), "--check"]) == 0
    assert "8 searched + 3 reference trials" in capsys.readouterr().out
    assert tune.main(["--benchmark", str(bench), "--space", "default", "--check"]) == 0
    assert "8 searched + 2 reference trials" in capsys.readouterr().out
    assert val_per_class("--space", "default") == 10
    assert val_per_class("--val-per-class", "4") == 4
