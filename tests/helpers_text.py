"""Tiny random BERT text encoders for the tests, built from configs and saved locally.

A word-piece vocabulary built here, a ``BertModel`` from a small ``BertConfig`` saved with
``save_pretrained`` (as a user's model folder is), and the same folder dressed as a
sentence-transformers model (Pooling, optionally Normalize). Nothing touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ("the a an of for and with to in on game games strategy library libraries python "
         "data file files real time tool tools text editor web server client c development "
         "documentation plugin module support utility command line").split()
TEXTS = ["Real-time strategy game of ancient warfare",
         "the python library",
         "web server",
         "documentation for the C library and its development files, with plugin support",
         "command line tool",
         "text editor with plugins for python and c",
         "games",
         "a utility"]


def vocabulary() -> dict[str, int]:
    """Word pieces of :data:`WORDS` (and BERT's special tokens) to ids."""
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"-,.()", *WORDS,
              *(f"##{s}" for s in ("s", "ing", "ed", "er"))]
    return {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}


def save_tiny_bert(folder: Path, n_layers: int, max_positions: int,
                   perturb_affines: bool = False) -> Path:
    """A random BERT (width 32, 4 heads) and its tokenizer saved in ``folder``.

    ``perturb_affines`` adds noise to every LayerNorm parameter and bias (they start at 1 and
    0), so that a test sees each of them matter.
    """
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocabulary()), hidden_size=32,
                                     num_hidden_layers=n_layers, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=max_positions)
    model = transformers.BertModel(config)
    if perturb_affines:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "LayerNorm" in name or name.endswith("bias"):
                    parameter.add_(0.3 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    transformers.BertTokenizer(vocab=vocabulary()).save_pretrained(folder)
    return folder


def sentence_folder(tiny_bert: Path, root: Path, pooling: dict, normalize: bool,
                    max_seq_length: int) -> Path:
    """``tiny_bert`` as a sentence-transformers folder with the given Pooling config."""
    folder = root / "sentence"
    folder.mkdir()
    for file in tiny_bert.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, **pooling}))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    return folder
