"""Model builders: encoders per input kind, linear heads, the student wrapper.

Builders take flat keyword arguments and return plain ``nn.Module``s; no config object crosses
into a model. One choice of encoder is one lookup in :data:`ENCODERS`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


def mlp_encoder(
    in_shape: tuple[int, ...], *, feature_dim: int = 64, hidden: int = 128, depth: int = 2
) -> nn.Module:
    """Encoder for vectors (any input shape is flattened). (B, *in_shape) -> (B, feature_dim)."""
    in_dim = 1
    for s in in_shape:
        in_dim *= s
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_dim
    for _ in range(depth - 1):
        layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, feature_dim))
    return nn.Sequential(*layers)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)
    )


def cnn_encoder(
    in_shape: tuple[int, ...],
    *,
    feature_dim: int = 64,
    width: int = 32,
    blocks: int = 2,
    pool: int = 4,
) -> nn.Module:
    """Small CNN for images (C, H, W) or log-mel spectrograms (1, n_mels, frames).

    Conv-BN-ReLU-pool blocks doubling the width, average-pooled to a ``pool`` x ``pool`` grid
    (global pooling would discard where strokes and formants are), then a linear map.
    (B, C, H, W) -> (B, feature_dim).
    """
    if len(in_shape) != 3:
        raise ValueError(f"cnn_encoder: input shape must be (C, H, W), got {tuple(in_shape)}")
    layers, c_in = [], in_shape[0]
    for i in range(blocks):
        layers.append(_conv_block(c_in, width * 2**i))
        c_in = width * 2**i
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(pool),
        nn.Flatten(),
        nn.Linear(c_in * pool * pool, feature_dim),
    )


def hf_in_dim(in_shape: tuple[int, ...]) -> int | None:
    """Features per frame a transformers encoder reads from rows of ``in_shape``: F of a
    sequence (T, F) or of a spectrogram (1, F, T); None for any other shape (vectors, images)."""
    if len(in_shape) == 2 or (len(in_shape) == 3 and in_shape[0] == 1):
        return int(in_shape[-1] if len(in_shape) == 2 else in_shape[-2])
    return None


def hf_config(path: str | Path):
    """The ``transformers`` config of a local model folder (never the hub).

    Raises FileNotFoundError naming the folder when it, or its config.json, is missing.
    """
    from transformers import AutoConfig

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model folder {folder} has no config.json (not written by save_pretrained)"
        )
    return AutoConfig.from_pretrained(str(folder), local_files_only=True)


def hf_takes_embeddings(config) -> bool | None:
    """Whether the ``AutoModel`` class of ``config`` takes ``inputs_embeds`` (how
    :class:`HFEncoder` feeds it); None when transformers maps no model class to it."""
    import inspect

    from transformers import MODEL_MAPPING

    try:
        cls = MODEL_MAPPING[type(config)]
    except (KeyError, ValueError):
        return None
    return "inputs_embeds" in inspect.signature(cls.forward).parameters


class HFEncoder(nn.Module):
    """A ``transformers`` encoder over a sequence of input vectors, mean-pooled.

    Inputs (B, T, in_dim) (or (B, 1, F, T) spectrograms, read as T frames of F features) are
    mapped to the model's hidden size and fed as ``inputs_embeds``. (B, ...) -> (B, feature_dim),
    or (B, hidden) without the output projection (``feature_dim=None``). With ``finetune=False``
    the model's own weights are frozen and it stays in eval mode (no dropout).
    """

    def __init__(
        self, model: nn.Module, in_dim: int, feature_dim: int | None, finetune: bool = True
    ):
        super().__init__()
        hidden = model.config.hidden_size
        self.inp = nn.Linear(in_dim, hidden)
        self.model = model
        self.out = nn.Linear(hidden, feature_dim) if feature_dim is not None else nn.Identity()
        self.finetune = finetune
        if not finetune:
            model.requires_grad_(False)
            model.eval()

    def train(self, mode: bool = True) -> HFEncoder:
        super().train(mode)
        if not self.finetune:
            self.model.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:  # (B, 1, F, T) -> (B, T, F)
            x = x.squeeze(1).transpose(1, 2)
        h = self.model(inputs_embeds=self.inp(x)).last_hidden_state  # (B, T, H)
        return self.out(h.mean(1))


def hf_encoder(
    in_shape: tuple[int, ...],
    *,
    feature_dim: int = 64,
    path: str | None = None,
    config: dict | None = None,
    project: bool = True,
    finetune: bool = True,
) -> nn.Module:
    """A ``transformers`` encoder loaded from a local folder (never the hub) or built from a config.

    ``config`` is a dict for ``AutoConfig.for_model`` (e.g. {"model_type": "bert",
    "hidden_size": 32, ...}): random weights, for tests and from-scratch students.
    ``project=False`` drops the output map: the features are the pooled hidden states, and
    ``feature_dim`` must then equal the model's hidden size.
    """
    from transformers import AutoConfig, AutoModel

    if (path is None) == (config is None):
        raise ValueError("hf_encoder: give exactly one of path (a local folder) or config")
    in_dim = hf_in_dim(tuple(in_shape))
    if in_dim is None:
        raise ValueError(
            f"hf_encoder: input shape must be a sequence (T, F) or a spectrogram (1, F, T), "
            f"got {tuple(in_shape)}"
        )
    if path is not None:
        hf_config(path)  # a missing folder or config.json, named
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    else:
        cfg = dict(config)
        model = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    hidden = model.config.hidden_size
    if not project and feature_dim != hidden:
        raise ValueError(
            f"hf_encoder: without a projection the features are the hidden states, "
            f"{hidden} wide; got feature_dim {feature_dim}"
        )
    return HFEncoder(model, in_dim, feature_dim if project else None, finetune)


ENCODERS = {"mlp": mlp_encoder, "cnn": cnn_encoder, "hf": hf_encoder}


def build_encoder(kind: str, in_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """Look up an encoder builder by name ("mlp", "cnn", "hf")."""
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder {kind!r}; expected one of {sorted(ENCODERS)}")
    return ENCODERS[kind](tuple(in_shape), **kwargs)


def linear_head(feature_dim: int, num_classes: int) -> nn.Linear:
    """Linear classifier on features: (B, feature_dim) -> (B, num_classes)."""
    return nn.Linear(feature_dim, num_classes)


class Student(nn.Module):
    """Encoder, optional projection to the teacher's feature size, and the student's own head.

    ``features`` gives z_s (B, D_t), the space in which alignment happens and on which the
    frozen teacher head h_t can read the student out.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, proj: nn.Module | None = None):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.proj = proj if proj is not None else nn.Identity()

    def features(self, x: Tensor) -> Tensor:
        return self.proj(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def build_student(
    kind: str,
    in_shape: tuple[int, ...],
    num_classes: int,
    *,
    feature_dim: int,
    teacher_dim: int | None = None,
    **encoder_kwargs,
) -> Student:
    """A student whose features match the teacher's size: a projection is added when they differ."""
    encoder = build_encoder(kind, in_shape, feature_dim=feature_dim, **encoder_kwargs)
    out_dim = teacher_dim or feature_dim
    proj = nn.Linear(feature_dim, out_dim) if out_dim != feature_dim else None
    return Student(encoder, linear_head(out_dim, num_classes), proj)


def freeze(module: nn.Module) -> nn.Module:
    """Frozen copy semantics for the teacher head: no gradient, eval mode."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


@torch.no_grad()
def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
