"""The command-line edge of every entry point: a bad argument is one ``error:`` line on stderr
that names its flag, exit status 2, no traceback and nothing written; a good one parses and
nothing runs (the property tests call only the parsing and checking functions)."""

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cmkd.data.__main__ as data_cli
from cmkd import diagnose, report, train

REPO = Path(__file__).resolve().parent.parent
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # the rule cmkd.tune states
PROPERTY = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Any value a user may type for a number: integers of every sign and size, floats, odd strings.
VALUES = st.one_of(
    st.integers(-3, 3).map(str),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "../x", "-", "--", "nan", "inf", "-inf", "1e3", " 2", "all", "a,b"]),
    st.text(max_size=6),
)


def _load_submit():
    spec = importlib.util.spec_from_file_location("cmkd_cli_submit", REPO / "cluster" / "submit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


submit = _load_submit()


def one_error_line(capsys, flag: str) -> str:
    """The single stderr line of a refusal; it names ``flag`` and there is no traceback."""
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert flag in lines[0], lines[0]
    assert "Traceback" not in out + err
    return lines[0]


def refused(capsys, parse, argv: list[str], flag: str) -> str:
    """``parse(argv)`` exits 2 with one error line naming ``flag``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    return one_error_line(capsys, flag)


def parses_or_refuses(capsys, parse, argv: list[str], flag: str):
    """The parsed result, or None after checking that the refusal is one line naming ``flag``."""
    capsys.readouterr()
    try:
        return parse(argv)
    except SystemExit as exit_:
        assert exit_.code == 2
        one_error_line(capsys, flag)
        return None


def whole(low: int, high: float = math.inf):
    return lambda v: type(v) is int and low <= v <= high


def finite(low: float, inclusive: bool):
    return lambda v: math.isfinite(v) and (v >= low if inclusive else v > low)


SEED = whole(0, 2**32 - 1)
LABELS = lambda v: v == "all" or whole(1)(v)  # noqa: E731


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working folder, the current one: whatever a refused command wrote lands here."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def nothing_written(folder: Path) -> None:
    assert sorted(p.name for p in folder.rglob("*")) == []


# ---------------------------------------------------------------- python -m cmkd.train


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--labels-per-class", "0"], "--labels-per-class"),
        (["--labels-per-class", "-3"], "--labels-per-class"),
        (["--labels-per-class", "abc"], "--labels-per-class"),
        (["--set", "epochs=0"], "--set epochs"),
        (["--set", "lr=nan"], "--set lr"),
        (["--set", "epsilom=0.1"], "--set epsilom"),
        (["--set", "w_fa"], "--set"),
        (["--set", "w_fa=["], "--set"),
        (["--benchmark", "../nowhere"], "--benchmark"),
        (["--config", "missing.yaml"], "--config"),
        (["--unlabelled", "-3"], "--unlabelled"),
        (["--unlabelled", "x"], "--unlabelled"),
        (["--bogus"], "--bogus"),
    ],
)
def test_train_refuses_a_bad_value(argv, flag, work, capsys):
    assert train.main([*argv, "--out", "results.json"]) == 2
    one_error_line(capsys, flag)
    nothing_written(work)


def test_train_config_with_several_bad_keys_is_one_line(tmp_path, work, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("distill:\n  epochs: 0\n  lr: -1\n  w_fa: x\n")
    assert train.main(["--config", str(config)]) == 2
    line = one_error_line(capsys, "--config")
    assert "distill.epochs" in line and "distill.lr" in line and "distill.w_fa" in line
    nothing_written(work)


def test_train_command_says_it_on_stderr(work):
    done = subprocess.run(
        [sys.executable, "-m", "cmkd.train", "--labels-per-class", "0"],
        capture_output=True,
        text=True,
        cwd=work,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: argument --labels-per-class: got '0', expected a whole number >= 1 or 'all'"
    ]
    nothing_written(work)


@PROPERTY
@given(value=VALUES)
def test_train_labels_per_class_parses_or_is_refused(value, capsys):
    parsed = parses_or_refuses(
        capsys, train.check_args, [f"--labels-per-class={value}"], "--labels-per-class"
    )
    if parsed is not None:
        assert LABELS(parsed[1].data.labels_per_class)


NUMERIC_DISTILL = [
    "w_fa", "w_la", "epsilon", "scaling", "reach", "refine", "mmd_multiplier", "mmd_kernels",
    "label_cost", "ot_reg", "ot_iters", "la_temperature", "kd_temperature", "kd_alpha",
    "inner_lr", "n1", "n2", "grad_clip", "lr", "weight_decay", "batch_size", "epochs",
    "steps_per_epoch", "seed",
]  # fmt: skip


@PROPERTY
@given(key=st.sampled_from(NUMERIC_DISTILL), value=VALUES)
def test_train_set_parses_or_is_refused(key, value, capsys):
    parsed = parses_or_refuses(capsys, train.check_args, ["--set", f"{key}={value}"], "--set")
    if parsed is not None:
        got = getattr(parsed[1].distill, key)
        assert got is None or not math.isnan(got)


# ---------------------------------------------------------------- python -m cmkd.diagnose

DIAGNOSE_FLAGS = {
    "--labels-per-class": ("labels_per_class", LABELS),
    "--warmup-epochs": ("warmup_epochs", whole(1)),
    "--steps-per-epoch": ("steps_per_epoch", whole(1)),
    "--permutations": ("permutations", whole(1)),
    "--seed": ("seed", SEED),
}


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--warmup-epochs", "0"], "--warmup-epochs"),
        (["--warmup-epochs", "-1"], "--warmup-epochs"),
        (["--steps-per-epoch", "0"], "--steps-per-epoch"),
        (["--permutations", "0"], "--permutations"),
        (["--labels-per-class", "0"], "--labels-per-class"),
        (["--labels-per-class", "abc"], "--labels-per-class"),
        (["--seed", "-1"], "--seed"),
        (["--seed", "1.5"], "--seed"),
        (["--benchmark", "nowhere"], "--benchmark"),
        (["--teacher", "a", "--student", "a"], "--student"),
    ],
)
def test_diagnose_refuses_a_bad_value(argv, flag, work, capsys):
    assert diagnose.main([*argv, "--json", "d.json", "--data-root", "data"]) == 2
    one_error_line(capsys, flag)
    nothing_written(work)


@PROPERTY
@given(flag=st.sampled_from(sorted(DIAGNOSE_FLAGS)), value=VALUES)
def test_diagnose_numbers_parse_or_are_refused(flag, value, capsys):
    parsed = parses_or_refuses(capsys, diagnose.check_args, [f"{flag}={value}"], flag)
    if parsed is not None:
        attr, ok = DIAGNOSE_FLAGS[flag]
        assert ok(getattr(parsed[0], attr))


# ---------------------------------------------------------------- python -m cmkd.report


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["sweep", "--top", "0"], "--top"),
        (["sweep", "--top", "-2"], "--top"),
        (["sweep", "--top", "many"], "--top"),
        (["sweep", "--wandb", "sometimes"], "--wandb"),
        (["nope"], "sweep"),
        (["sweep", "--out", "sweep/file"], "--out"),
    ],
)
def test_report_refuses_a_bad_value(argv, flag, work, capsys):
    (work / "sweep").mkdir()
    (work / "sweep" / "file").write_text("")
    assert report.main(argv) == 2
    one_error_line(capsys, flag)
    assert sorted(p.name for p in work.rglob("*")) == ["file", "sweep"]


@PROPERTY
@given(value=VALUES)
def test_report_top_parses_or_is_refused(value, tmp_path, capsys):
    parsed = parses_or_refuses(
        capsys, report.parse_args, [str(tmp_path), f"--top={value}"], "--top"
    )
    if parsed is not None:
        assert whole(1)(parsed.top)
    nothing_written(tmp_path)


# ---------------------------------------------------------------- python -m cmkd.data

SYNTH_FLAGS = {
    "--num-classes": whole(2),
    "--dim": whole(1),
    "--shared": whole(0),
    "--specific": whole(0),
    "--nondecisive": whole(0),
    "--class-sep": finite(0.0, inclusive=False),
    "--noise": finite(0.0, inclusive=True),
    "--obs-noise": finite(0.0, inclusive=True),
    "--train-per-class": whole(1),
    "--val-per-class": whole(1),
    "--test-per-class": whole(1),
    "--seed": SEED,
}
AVDIGITS_FLAGS = {
    "--repeats": whole(1),
    "--images-per-class": whole(1),
    "--workers": whole(1),
    "--seed": SEED,
}
CONVERT_FLAGS = {"--n-mels": whole(1), "--frames": whole(1), "--seed": SEED}


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["build", "synth", "--num-classes", "1"], "--num-classes"),
        (["build", "synth", "--dim", "5"], "--dim"),  # below shared + specific + nondecisive
        (["build", "synth-nohelp", "--specific", "0"], "--specific"),  # no decisive dim left
        (["build", "synth", "--class-sep", "0"], "--class-sep"),
        (["build", "synth", "--noise", "nan"], "--noise"),
        (["build", "synth", "--train-per-class", "-4"], "--train-per-class"),
        (["build", "synth", "--seed", "-1"], "--seed"),
        (["build", "avdigits", "--repeats", "0"], "--repeats"),
        (["build", "avdigits", "--languages", "xx"], "--languages"),
        (["build", "avdigits", "--variants", "m1,m1,m3"], "--variants"),
        (["build", "avdigits", "--workers", ""], "--workers"),
        (["convert", "ave", "raw", "--n-mels", "0"], "--n-mels"),
        (["convert", "ravdess", "raw", "--image-size", "32"], "--image-size"),
        (["convert", "cremad", "missing"], "RAW"),
        (["validate", "raw", "--modalities", ","], "--modalities"),
    ],
)
def test_data_refuses_a_bad_value(argv, flag, work, capsys):
    (work / "raw").mkdir()
    if argv[0] != "validate":
        argv = [*argv, "--out", "out"]
    assert data_cli.main(argv) == 2
    one_error_line(capsys, flag)
    assert sorted(p.name for p in work.rglob("*")) == ["raw"]


@PROPERTY
@given(
    command=st.sampled_from(
        [("build", "synth", SYNTH_FLAGS), ("build", "synth-nohelp", SYNTH_FLAGS)]
        + [("build", "avdigits", AVDIGITS_FLAGS)]
        + [("convert", name, CONVERT_FLAGS) for name in ("ravdess", "cremad", "ave")]
    ),
    data=st.data(),
    value=VALUES,
)
def test_data_numbers_parse_or_are_refused(command, data, value, tmp_path, capsys):
    verb, name, flags = command
    flag = data.draw(st.sampled_from(sorted(flags)))
    raw = [str(tmp_path)] if verb == "convert" else []
    argv = [verb, name, *raw, "--out", str(tmp_path / "out"), f"{flag}={value}"]
    parsed = parses_or_refuses(capsys, data_cli.parse_args, argv, flag)
    if parsed is not None:
        assert flags[flag](getattr(parsed, flag[2:].replace("-", "_")))
    nothing_written(tmp_path)


# ---------------------------------------------------------------- python cluster/submit.py


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "../up"],
        ["status", "a..b"],
        ["logs", "a b", "--follow"],
        ["stop", ""],
        ["resume", "x" * 101],
        ["resume", "--", "-x"],
        ["status", "ok", "--bogus"],
    ],
)
def test_submit_refuses_a_bad_sweep_name(argv, capsys):
    assert submit.main(argv) == 2
    one_error_line(capsys, "--bogus" if "--bogus" in argv else "NAME")


@PROPERTY
@given(
    command=st.sampled_from(["resume", "status", "logs", "stop"]),
    name=st.one_of(VALUES, st.text(alphabet="ab.-_/", max_size=8), st.just("a" * 101)),
)
def test_submit_sweep_names_parse_or_are_refused(command, name, capsys):
    parsed = parses_or_refuses(capsys, submit.parse_args, [command, "--", name], "NAME")
    ok = SWEEP_NAME.fullmatch(name) is not None and ".." not in name
    assert (parsed is not None) == ok


@PROPERTY
@given(value=VALUES)
def test_unlabelled_parses_or_is_refused_by_train_and_tune(value, capsys):
    from cmkd import train, tune

    for parse in (lambda a: train.check_args(a)[1].data.unlabelled,
                  lambda a: tune.parse_args(a).unlabelled):  # fmt: skip
        got = parses_or_refuses(capsys, parse, ["--unlabelled", value], "--unlabelled")
        if got is not None:
            assert got == "all" or whole(0)(got)
            assert got == ("all" if value == "all" else int(value))
