"""Tiny random CLIP models for the tests, built from a config and saved locally.

A word-level tokenizer over the words a test needs (lower-cased, split on spaces), a
``CLIPModel`` of small random towers and an image processor for small images, saved with
``save_pretrained`` in a folder as a user's model is. Nothing touches the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def save_tiny_clip(folder: Path, words: Sequence[str], *, width: int = 32,
                   projection_dim: int = 16, image_size: int = 32) -> Path:
    """A random CLIP (``torch.manual_seed(0)``) whose tokenizer knows ``words``."""
    import tokenizers
    import torch
    import transformers

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {word: i for i, word in enumerate(dict.fromkeys([*specials, *words]))}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = tokenizers.normalizers.Lowercase()
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    # CLIP's text tower reads the embedding at the end-of-text token: every text ends with one
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>")
    config = transformers.CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": width,
                     "intermediate_size": 2 * width, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 64,
                     "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3},
        vision_config={"hidden_size": width, "intermediate_size": 2 * width,
                       "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": 8},
        projection_dim=projection_dim)
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder
