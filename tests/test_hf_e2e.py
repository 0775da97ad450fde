"""Pretrained encoders end to end, as a user runs them: a transformers model saved to a folder,
the teacher bank built from it through Ray Data (``python -m cmkd.teacher --engine ray``), then a
sweep (``python -m cmkd.tune``) whose student is another saved model, on a real local Ray cluster.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cmkd.bank import TeacherBank
from cmkd.config import Experiment, HFEncoderSpec
from cmkd.data import load_split, split_path, write_meta, write_split
from cmkd.data.synth import SynthParams, sample_synth
from cmkd.teacher import TEACHER_FILE, benchmark_fingerprint, encode, load_teacher

pytestmark = pytest.mark.ray


def save_bert(folder, hidden: int) -> str:
    """A 2-layer BERT with random weights, written the way a pretrained one is shipped."""
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.for_model(
        "bert",
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(folder)
    return str(folder)


def build_bench(out):
    """Teacher modality 'seq' as sequences (8, 6), student 'spec' as spectrograms (1, 6, 8)."""
    p = SynthParams(num_classes=4, dim=48, train_per_class=20, val_per_class=5, test_per_class=5)
    data = sample_synth(p, seed=0, splits=("train", "val", "test"))
    shapes = {"seq": (8, 6), "spec": (1, 6, 8)}
    for m, view in (("seq", "a"), ("spec", "b")):
        for s in ("train", "val", "test"):
            x, y = data[view, s]
            ids = [f"{m}-{s}-{i}" for i in range(len(y))]
            write_split(split_path(out, m, s), x.reshape(len(x), *shapes[m]), y, ids)
    write_meta(out, "hf-e2e", 4, shapes, seed=0)
    return out


def run(cmd, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "WANDB_"))}
    proc = subprocess.run(
        [sys.executable, "-m", *cmd],
        capture_output=True,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"},
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_bank_from_a_pretrained_teacher_through_ray_data_then_a_sweep_with_a_pretrained_student(
    tmp_path,
):
    bench = build_bench(tmp_path / "bench")
    teacher_model = save_bert(tmp_path / "teacher-bert", 32)
    student_model = save_bert(tmp_path / "student-bert", 16)

    # The bank, where every run on this benchmark reads it: a frozen pretrained body, no
    # projection, so the bank's features are the model's 32-wide pooled hidden states.
    stdout = run(
        [
            "cmkd.teacher",
            "--benchmark",
            str(bench),
            "--modality",
            "seq",
            "--out",
            str(bench / "teacher-seq"),
            "--encoder",
            f"{{kind: hf, path: {teacher_model}, project: false, finetune: false}}",
            "--epochs",
            "2",
            "--engine",
            "ray",
        ]
    )
    out = json.loads(stdout[stdout.index("\n{") + 1 :])  # the result, after the log lines
    assert out["engine"] == "ray" and out["bank_rows"] == 80
    assert out["encoder"] == {
        "kind": "hf",
        "path": teacher_model,
        "project": False,
        "finetune": False,
    }
    bank = TeacherBank.load(bench / "teacher-seq", fingerprint=benchmark_fingerprint(bench))
    assert bank.feature_dim == 32 and bank.info["teacher"]["engine"] == "ray"
    # Ray Data's actors wrote the rows the saved teacher gives in process, in the file's order
    encoder, head, spec = load_teacher(bench / "teacher-seq" / TEACHER_FILE)
    assert spec["encoder"] == "hf"
    train = load_split(bench, "seq", "train")
    z, logits = encode(encoder, head, train.x)
    np.testing.assert_allclose(bank.z, z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bank.logits, logits, rtol=1e-4, atol=1e-5)
    assert np.array_equal(bank.y, train.y)
    # frozen: the transformer body in teacher.pt is the saved model's own
    from transformers import AutoModel

    saved = AutoModel.from_pretrained(teacher_model).state_dict()
    body = encoder.model.state_dict()
    assert all(torch.equal(body[k], v) for k, v in saved.items())

    # A sweep whose student is the other saved model (16 wide, projected to the bank's 32).
    storage = tmp_path / "runs"
    stdout = run(
        [
            "cmkd.tune",
            "--space",
            "smoke",
            "--benchmark",
            str(bench),
            "--encoder",
            f"{{kind: hf, path: {student_model}}}",
            "--num-samples",
            "1",
            "--epochs",
            "1",
            "--final-seeds",
            "0",
            "--storage",
            str(storage),
            "--name",
            "hf",
            "--wandb",
            "disabled",
        ]
    )
    results = json.loads((storage / "hf" / "results.json").read_text())
    # the recommendation keeps the student's encoder: `cmkd.train --config best.yaml` reruns it
    best = Experiment.from_yaml(storage / "hf" / "best.yaml")
    assert best.data.encoder == HFEncoderSpec(kind="hf", path=student_model)
    trials = results["trials"]
    assert len(trials) == 3 and all(t["error"] is None for t in trials), stdout[-2000:]
    assert all(t["epochs_run"] == 1 and 0.0 <= t["best_val_acc"] <= 1.0 for t in trials)
    # every trial trained the pretrained student: its checkpoint holds the BERT's weights,
    # the 16 -> 32 projection, and a body moved away from the saved one by training
    states = sorted((storage / "hf").glob("*/checkpoint_*/state.pt"))
    assert len(states) >= 3, sorted(p.name for p in (storage / "hf").iterdir())
    student_saved = AutoModel.from_pretrained(student_model).state_dict()
    for path in states:
        state = torch.load(path, weights_only=False, map_location="cpu")["student"]
        assert state["encoder.out.weight"].shape == (32, 16)
        key = "encoder.model.encoder.layer.0.attention.self.query.weight"
        assert state[key].shape == (16, 16)
        assert not torch.equal(state[key], student_saved[key.removeprefix("encoder.model.")])
