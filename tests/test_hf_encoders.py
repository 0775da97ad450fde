"""Pretrained transformers encoders from the config: data.encoder {kind: hf, path: DIR} for the
student, --encoder for the teacher; every bad setting is refused before training, naming its key.

The models are tiny BERTs saved here with ``save_pretrained`` (random weights, nothing
downloaded); the benchmark holds sequence, spectrogram, vector and image modalities of the same
rows.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd import tune
from cmkd.bank import TeacherBank
from cmkd.config import ConfigError, DataConfig, Experiment, HFEncoderSpec
from cmkd.data import load_split, split_path, write_meta, write_split
from cmkd.data.synth import SynthParams, sample_synth
from cmkd.teacher import TEACHER_FILE, encode, load_teacher, main, train_teacher
from cmkd.train import load_run_data, make_student

SHAPES = {"seq": (8, 6), "spec": (1, 6, 8), "vec": (48,), "img": (3, 4, 4)}


def save_bert(folder, hidden: int = 32, layers: int = 1):
    """A randomly initialised BERT written the way a pretrained one is shipped."""
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.for_model(
        "bert",
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(folder)
    return folder


def build_bench(out, per_class: int = 20, shapes=SHAPES):
    """Four modalities of 4 classes: synth's two views, cut into the given row shapes."""
    p = SynthParams(
        num_classes=4,
        dim=48,
        train_per_class=per_class,
        val_per_class=5,
        test_per_class=5,
        pool_per_class=0,
    )
    data = sample_synth(p, seed=0)
    for m, shape in shapes.items():
        view = "a" if m == "seq" else "b"
        for s in ("train", "val", "test"):
            x, y = data[view, s]
            ids = [f"{m}-{s}-{i}" for i in range(len(y))]
            write_split(split_path(out, m, s), x.reshape(len(x), *shape), y, ids)
    write_meta(out, "hf-bench", 4, shapes, seed=0)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The benchmark, a teacher bank of 32-wide features on 'seq', and two tiny models."""
    root = tmp_path_factory.mktemp("hf")
    bench = build_bench(root / "bench")
    train_teacher(bench, "seq", bench / "teacher-seq", feature_dim=32, epochs=1, log=print)
    return bench, save_bert(root / "bert32", 32), save_bert(root / "bert16", 16)


def data_cfg(bench, student="spec", **encoder):
    return DataConfig(
        benchmark=str(bench), student=student, teacher="seq", encoder={"kind": "hf", **encoder}
    )


# ------------------------------------------------------------------ the key, as written


def test_plain_names_keep_working_and_a_pretrained_encoder_round_trips(tmp_path):
    assert Experiment.from_dict({"data": {"encoder": "cnn"}}).data.encoder == "cnn"
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  encoder: {kind: hf, path: models/bert, project: false}\n")
    exp = Experiment.from_yaml(path)
    assert exp.data.encoder == HFEncoderSpec(
        kind="hf", path=str(Path.cwd() / "models/bert"), project=False, finetune=True
    )
    # a trial receives model_dump() and validates it again: the same setting comes back
    assert DataConfig.model_validate(exp.data.model_dump()) == exp.data
    exp.to_yaml(tmp_path / "again.yaml")
    assert Experiment.from_yaml(tmp_path / "again.yaml") == exp


@pytest.mark.parametrize(
    "encoder,expected",
    [
        ("{kind: hf}", r"exp.yaml: data.encoder.path: got None; expected the local folder"),
        ("hf", r"data.encoder 'hf': not an encoder \(a transformers encoder needs its folder\)"),
        (
            "{kind: hf, path: m, projet: false}",
            r"data.encoder: unknown key 'projet' \(did you mean 'project'\?\)",
        ),
        ("{kind: cnn}", r"data.encoder.kind: got 'cnn'; a mapping describes a pretrained"),
        ("{kind: hf, path: m, finetune: 3}", r"data.encoder.finetune: .*valid boolean"),
    ],
)
def test_a_bad_encoder_setting_names_its_key(tmp_path, encoder, expected):
    path = tmp_path / "exp.yaml"
    path.write_text(f"data:\n  encoder: {encoder}\n")
    with pytest.raises(ConfigError, match=expected):
        Experiment.from_yaml(path)


# ------------------------------------------------------------------ checked with the data


def test_a_missing_model_folder_is_named_before_any_teacher_is_trained(world, tmp_path):
    bench, _, _ = world
    with pytest.raises(ConfigError, match=r"data.encoder.path '.*nope': model folder .* does not"):
        load_run_data(data_cfg(bench, path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data.encoder.path '.*empty': .* has no config.json"):
        load_run_data(data_cfg(bench, path=str(tmp_path / "empty")))
    # the check comes first: no bank was built for a teacher modality that has none
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_data(
            DataConfig(
                benchmark=str(bench),
                student="spec",
                teacher="vec",
                encoder={"kind": "hf", "path": str(tmp_path / "nope")},
            )
        )
    assert not (bench / "teacher-vec").exists()


@pytest.mark.parametrize("student,shape", [("vec", "(48,)"), ("img", "(3, 4, 4)")])
def test_a_modality_the_encoder_cannot_read_is_refused(world, student, shape):
    bench, bert32, _ = world
    with pytest.raises(ConfigError) as e:
        load_run_data(data_cfg(bench, student, path=str(bert32)))
    msg = str(e.value)
    assert msg.startswith("data.encoder: a transformers encoder reads sequences (T, F)")
    assert f"'{student}' modality's rows have shape {shape}" in msg


def test_without_projection_the_hidden_size_must_be_the_banks_feature_size(world):
    bench, bert32, bert16 = world
    with pytest.raises(ConfigError) as e:
        load_run_data(data_cfg(bench, path=str(bert16), project=False))
    msg = str(e.value)
    assert msg.startswith("data.encoder.project false: the features would be the pooled hidden")
    assert "hidden_size 16" in msg and "'seq' teacher's bank has features of size 32" in msg
    bad = DataConfig(
        benchmark=str(bench),
        student="spec",
        teacher="seq",
        feature_dim=24,
        encoder={"kind": "hf", "path": str(bert32), "project": False},
    )
    with pytest.raises(ConfigError, match=r"data.feature_dim 24 contradicts data.encoder.project"):
        load_run_data(bad)


def test_too_many_frames_for_the_models_positions_are_refused(tmp_path):
    bench = build_bench(tmp_path / "long", shapes={"seq": (8, 6), "spec": (1, 2, 24)})
    with pytest.raises(ConfigError, match=r"have 24 frames, .* max_position_embeddings=16"):
        load_run_data(data_cfg(bench, path=str(save_bert(tmp_path / "b", 16))))


def test_a_model_that_takes_no_feature_rows_is_refused(world, tmp_path):
    from transformers import AutoConfig, AutoModel

    bench, _, _ = world
    cfg = AutoConfig.for_model(
        "vit", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    AutoModel.from_config(cfg).save_pretrained(tmp_path / "vit")
    with pytest.raises(ConfigError, match=r"data.encoder.path .*'vit' takes no inputs_embeds"):
        load_run_data(data_cfg(bench, path=str(tmp_path / "vit")))


# ------------------------------------------------------------------ what gets built


def test_students_read_sequences_and_spectrograms_through_the_pretrained_weights(world):
    from transformers import AutoModel

    bench, bert32, bert16 = world
    pretrained = AutoModel.from_pretrained(bert32).state_dict()
    for student, path, project in (("spec", bert32, False), ("seq", bert16, True)):
        cfg = DataConfig(
            benchmark=str(bench),
            student=student,
            teacher="spec" if student == "seq" else "seq",
            encoder={"kind": "hf", "path": str(path), "project": project},
        )
        if student == "seq":  # a bank for the spec teacher (64-wide: the default size)
            train_teacher(bench, "spec", bench / "teacher-spec", encoder="mlp", epochs=1, log=print)
        data = load_run_data(cfg)
        model = make_student(data, cfg)
        z = model.features(data.x_val[:5])
        assert z.shape == (5, data.bank.feature_dim) and torch.isfinite(z).all()
        # no map at all without projection; a 16 -> 64 one with it
        out = model.encoder.out
        assert isinstance(out, torch.nn.Identity) if not project else out.out_features == 64
        if path == bert32:  # the student starts from the saved weights, not random ones
            state = model.encoder.model.state_dict()
            assert all(torch.equal(state[k], v) for k, v in pretrained.items())


def test_a_frozen_encoder_keeps_its_weights_and_trains_the_rest(world):
    bench, bert32, _ = world
    cfg = data_cfg(bench, path=str(bert32), finetune=False)
    data = load_run_data(cfg)
    model = make_student(data, cfg).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    torch.nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(not k.startswith("encoder.model.") for k in changed)
    assert "encoder.inp.weight" in changed and not model.encoder.model.training


# ------------------------------------------------------------------ the teacher


def test_a_pretrained_teacher_writes_a_bank_its_checkpoint_reproduces(world, tmp_path):
    bench, bert32, _ = world
    result = train_teacher(
        bench,
        "spec",
        tmp_path / "t",
        encoder=HFEncoderSpec(kind="hf", path=str(bert32), project=False),
        epochs=1,
        log=print,
    )
    bank = TeacherBank.load(tmp_path / "t")
    assert bank.feature_dim == 32  # the hidden size: no projection
    assert result["encoder"] == {
        "kind": "hf",
        "path": str(bert32),
        "project": False,
        "finetune": True,
    }
    info = json.loads((tmp_path / "t" / "bank.json").read_text())
    assert info["teacher"]["encoder"]["kind"] == "hf"
    # teacher.pt alone rebuilds it: the model folder may be gone where the bank is computed
    moved = tmp_path / "moved"
    bert32.rename(moved)
    try:
        encoder, head, spec = load_teacher(tmp_path / "t" / TEACHER_FILE)
    finally:
        moved.rename(bert32)
    assert spec["pretrained"] == str(bert32) and "path" not in spec["encoder_kwargs"]
    z, logits = encode(encoder, head, load_split(bench, "spec", "train").x)
    np.testing.assert_allclose(z, bank.z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, bank.logits, rtol=1e-5, atol=1e-5)


def test_the_teacher_command_names_a_bad_encoder(world, tmp_path, capsys):
    bench, bert32, _ = world
    argv = ["--benchmark", str(bench), "--modality", "vec", "--out", str(tmp_path / "t")]
    with pytest.raises(SystemExit) as e:
        main([*argv[:3], "seq", *argv[4:], "--encoder", f"{{kind: hf, path: {tmp_path / 'no'}}}"])
    assert e.value.code == 2 and "--encoder path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--encoder", f"{{kind: hf, path: {bert32}}}"])
    err = capsys.readouterr().err
    assert "--encoder: a transformers encoder reads sequences" in err and "(48,)" in err
    with pytest.raises(SystemExit):
        main(
            [*argv[:3], "seq", *argv[4:], "--feature-dim", "8"]
            + ["--encoder", f"{{kind: hf, path: {bert32}, project: false}}"]
        )
    assert "--feature-dim 8 contradicts --encoder project false" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_the_sweep_check_refuses_a_bad_student_encoder(world, tmp_path, capsys):
    bench, bert32, bert16 = world
    argv = ["--benchmark", str(bench), "--student", "spec", "--teacher", "seq", "--space", "smoke"]
    argv += ["--storage", str(tmp_path), "--check"]
    assert tune.main([*argv, "--encoder", f"{{kind: hf, path: {bert32}, project: false}}"]) == 0
    assert "ok: sweep" in capsys.readouterr().out
    assert tune.main([*argv, "--encoder", f"{{kind: hf, path: {bert16}, project: false}}"]) == 2
    assert "data.encoder.project false" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tune.main([*argv, "--encoder", "{kind: hf}"])
    assert "--encoder path: got None" in capsys.readouterr().err
