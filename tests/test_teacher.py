"""The teacher: trained, saved so that it can be rebuilt, and its bank computed in process or
through Ray Data with the same rows."""

import numpy as np
import pytest
import torch

from cmkd.bank import TeacherBank
from cmkd.data import load_split, split_path
from cmkd.data.synth import build_synth
from cmkd.models import cnn_encoder, linear_head
from cmkd.teacher import (
    TEACHER_FILE,
    benchmark_fingerprint,
    encode,
    encode_ray,
    load_teacher,
    main,
    train_teacher,
)


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """A tiny synth benchmark (200 train rows) and a teacher trained on its modality a."""
    root = tmp_path_factory.mktemp("teacher")
    bench = root / "synth"
    build_synth(bench, "synth", train_per_class=20, val_per_class=5, test_per_class=5)
    result = train_teacher(bench, "a", root / "teacher-a", epochs=2, log=lambda *_: None)
    return bench, root / "teacher-a", result


def test_saved_teacher_rebuilds_the_encoder_that_wrote_the_bank(taught):
    bench, out, result = taught
    bank = TeacherBank.load(out, fingerprint=benchmark_fingerprint(bench))
    train = load_split(bench, "a", "train")
    encoder, head, spec = load_teacher(out / TEACHER_FILE)
    z, logits = encode(encoder, head, train.x)
    assert np.array_equal(z, bank.z) and np.array_equal(logits, bank.logits)
    assert np.array_equal(bank.y, train.y) and bank.info["teacher"]["engine"] == "local"
    assert spec["modality"] == "a" and result["bank_rows"] == len(train) == 200


def test_teacher_saved_before_encoder_options_still_loads(tmp_path):
    encoder = cnn_encoder((1, 8, 8), feature_dim=4)  # the builder's own defaults
    model = torch.nn.Sequential(encoder, linear_head(4, 3))
    spec = {"encoder": "cnn", "in_shape": [1, 8, 8], "feature_dim": 4, "num_classes": 3}
    torch.save({"spec": spec, "state": model.state_dict()}, tmp_path / TEACHER_FILE)
    encoder2, head2, _ = load_teacher(tmp_path / TEACHER_FILE)
    x = torch.randn(5, 1, 8, 8)
    model.eval()
    assert torch.equal(head2(encoder2(x)), model(x))


def test_truncated_teacher_checkpoint_is_named(tmp_path):
    path = tmp_path / TEACHER_FILE
    torch.save({"spec": {}, "state": {"w": torch.zeros(100)}}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"teacher.pt: cannot be read as a teacher checkpoint"):
        load_teacher(path)


def test_unknown_engine_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"engine 'spark': expected one of \['local', 'ray'\]"):
        train_teacher(tmp_path / "nowhere", "a", tmp_path / "out", engine="spark")


def test_gpu_flag_needs_the_ray_engine(capsys):
    with pytest.raises(SystemExit):
        main(["--benchmark", "b", "--modality", "a", "--out", "o", "--gpu"])
    assert "--gpu needs --engine ray" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
def test_ray_data_rows_equal_the_local_rows_in_file_order(taught, ray_cluster):
    bench, out, _ = taught
    bank = TeacherBank.load(out)
    # Two actors on 64-row blocks: blocks come back in any order, rows must not.
    z, logits = encode_ray(
        out / TEACHER_FILE,
        split_path(bench, "a", "train"),
        batch_size=64,
        concurrency=2,
        num_cpus=0.5,
    )
    assert z.shape == bank.z.shape and logits.shape == bank.logits.shape
    np.testing.assert_allclose(z, bank.z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, bank.logits, rtol=1e-5, atol=1e-6)


@pytest.mark.ray
def test_train_teacher_on_the_ray_engine_writes_a_loadable_bank(taught, ray_cluster, tmp_path):
    bench, _, _ = taught
    result = train_teacher(
        bench, "a", tmp_path / "teacher-a", epochs=1, engine="ray", log=lambda *_: None
    )
    bank = TeacherBank.load(tmp_path / "teacher-a", fingerprint=benchmark_fingerprint(bench))
    train = load_split(bench, "a", "train")
    encoder, head, _ = load_teacher(tmp_path / "teacher-a" / TEACHER_FILE)
    z, logits = encode(encoder, head, train.x)
    assert result["engine"] == "ray" and bank.info["teacher"]["engine"] == "ray"
    assert np.array_equal(bank.y, train.y) and len(bank.y) == 200
    np.testing.assert_allclose(bank.z, z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bank.logits, logits, rtol=1e-5, atol=1e-6)
