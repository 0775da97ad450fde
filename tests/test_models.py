"""Encoder builders give the documented shapes, including a transformers encoder offline."""

import pytest
import torch

from cmkd.models import build_encoder, build_student, count_params


@pytest.mark.parametrize(
    "kind,in_shape,kw",
    [
        ("mlp", (20,), {}),
        ("cnn", (1, 28, 28), {}),  # images
        ("cnn", (1, 40, 32), {"blocks": 3}),  # log-mel (1, n_mels, frames)
        (
            "hf",
            (1, 40, 32),
            {
                "config": {
                    "model_type": "bert",
                    "hidden_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "intermediate_size": 64,
                }
            },
        ),
    ],
)
def test_encoders_map_inputs_to_features(kind, in_shape, kw):
    enc = build_encoder(kind, in_shape, feature_dim=24, **kw)
    out = enc(torch.randn(3, *in_shape))
    assert out.shape == (3, 24) and torch.isfinite(out).all()


def test_hf_encoder_loads_from_a_local_folder_only(tmp_path):
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.for_model(
        "bert", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    AutoModel.from_config(cfg).save_pretrained(tmp_path / "tiny")
    enc = build_encoder("hf", (10, 8), feature_dim=12, path=str(tmp_path / "tiny"))
    assert enc(torch.randn(2, 10, 8)).shape == (2, 12)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_encoder("hf", (10, 8), path=str(tmp_path / "nope"))


def test_student_projects_to_the_teacher_size_only_when_needed():
    same = build_student("mlp", (20,), 5, feature_dim=16, teacher_dim=16)
    other = build_student("mlp", (20,), 5, feature_dim=16, teacher_dim=32)
    assert isinstance(same.proj, torch.nn.Identity)
    assert other.features(torch.randn(4, 20)).shape == (4, 32)
    assert other(torch.randn(4, 20)).shape == (4, 5)
    assert count_params(other) > count_params(same)


def test_unknown_encoder_is_named():
    with pytest.raises(ValueError, match="unknown encoder 'resnet'"):
        build_encoder("resnet", (3, 8, 8))
