"""The evaluation package: what it exports, and names in messages that a user can call."""

import importlib
import re

import numpy as np
import pytest

import daskdict.evaluation as evaluation
from daskdict.errors import InvalidInputError
from daskdict.explanations.explain import explain
from daskdict.learn.dictionary import Codes


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_falcon_names_a_text_encoder_that_exists():
    """The hint of method='falcon' without text embeddings names callables a user can find."""
    codes = Codes(np.zeros((3, 1), np.int32), np.ones((3, 1)), 2)
    with pytest.raises(InvalidInputError) as caught:
        explain(codes, ["a kite", "a boat", "a kite"], method="falcon",
                image_embeddings=np.eye(3))
    named = re.findall(r"(daskdict(?:\.\w+)+)\(", str(caught.value))
    assert "daskdict.evaluation.clip_text_encoder" in named
    for dotted in named:
        assert callable(_resolve(dotted)), dotted


def test_package_exports_the_plots_and_encoders_the_docs_name():
    for name in ("clip_text_encoder", "plot_autointerp", "autointerp_scores",
                 "recovered_fraction", "max_coherence", "reconstruction_metrics"):
        assert name in evaluation.__all__ and callable(getattr(evaluation, name))


def test_recovery_uses_unit_rows_and_keeps_zero_atoms_finite():
    atoms = np.eye(4)
    learned = np.vstack([3.0 * np.eye(4)[:3], np.zeros(4)])  # scale is ignored; a dead atom
    assert evaluation.recovered_fraction(atoms, learned) == pytest.approx(0.75)
    assert np.isfinite(evaluation.max_coherence(learned))
