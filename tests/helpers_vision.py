"""Tiny random vision transformers for the decomposition tests, built from configs, saved locally.

Each model (32 px images, patch 8, width 32, 4 heads) is saved with ``save_pretrained`` together
with an image processor that makes 32 x 32 inputs, as a user's model folder is. Every LayerNorm
parameter, bias and layer scale gets noise (they start at 1, 0 and a constant), so that a test
sees each of them matter. Nothing touches the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# the families decompose covers, with the variants the tests build
KINDS = ("vit", "vit_msn", "deit", "dinov2", "dinov2_swiglu", "dinov2_registers", "clip",
         "clip_projection", "clip_vision")
SQUARE = {"height": 32, "width": 32}


def tiny_config(n_layers: int) -> dict:
    """The shared config fields: width 32, 4 heads, 32 px images, patch 8."""
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                num_attention_heads=4, image_size=32, patch_size=8)


def build_vision(kind: str, n_layers: int = 3):
    """A tiny random model of ``kind`` (one of :data:`KINDS`) and its image processor."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    tiny = tiny_config(n_layers)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, vocab_size=100, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)
    clip_processor = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=SQUARE)
    if kind == "vit":
        model, processor = tf.ViTModel(tf.ViTConfig(**tiny)), tf.ViTImageProcessor(size=SQUARE)
    elif kind == "vit_msn":
        model = tf.ViTMSNModel(tf.ViTMSNConfig(**tiny))
        processor = tf.ViTImageProcessor(size=SQUARE)
    elif kind == "dinov2_registers":
        model = tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(
            **tiny, num_register_tokens=2))
        processor = tf.BitImageProcessor(size={"shortest_edge": 32}, crop_size=SQUARE)
    elif kind == "deit":
        model = tf.DeiTModel(tf.DeiTConfig(**tiny))
        processor = tf.DeiTImageProcessor(size={"height": 40, "width": 40}, crop_size=SQUARE)
    elif kind in ("dinov2", "dinov2_swiglu"):
        model = tf.Dinov2Model(tf.Dinov2Config(**tiny, use_swiglu_ffn=kind == "dinov2_swiglu"))
        processor = tf.BitImageProcessor(size={"shortest_edge": 32}, crop_size=SQUARE)
    elif kind == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=tiny,
                                           projection_dim=16))
        processor = clip_processor
    elif kind == "clip_projection":
        model = tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(**tiny, projection_dim=16))
        processor = clip_processor
    elif kind == "clip_vision":
        model, processor = tf.CLIPVisionModel(tf.CLIPVisionConfig(**tiny)), clip_processor
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in ("norm", "bias", "lambda1", "layrnorm")):
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model.eval(), processor


def save_vision(kind: str, folder: Path, n_layers: int = 3) -> Path:
    """:func:`build_vision` saved in ``folder`` (model and image processor)."""
    model, processor = build_vision(kind, n_layers)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` random RGB images (uint8, H x W x 3) of various sizes."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(rng.integers(28, 48)), int(rng.integers(28, 48)), 3),
                         dtype=np.uint8) for _ in range(n)]
