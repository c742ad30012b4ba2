"""Data with a known answer: planted dictionaries, captions and stores for tests and demos, and
a real human-annotated caption corpus (Debian's package index)."""

from daskdict.datasets.components import make_aligned_components, planted_orthogonal_maps
from daskdict.datasets.debian import (
    PackageCorpus,
    debian_packages_from_apt,
    load_debian_packages,
)
from daskdict.datasets.features import (
    FeatureComponents,
    make_feature_components,
    planted_feature_components,
    spurious_values,
)
from daskdict.datasets.planted import (
    Planted,
    concept_names,
    make_planted,
    planted_atoms,
    planted_captions,
    planted_images,
    planted_text_encoder,
    write_named_planted_store,
    write_planted_store,
)

__all__ = [
    "FeatureComponents",
    "PackageCorpus",
    "Planted",
    "concept_names",
    "debian_packages_from_apt",
    "load_debian_packages",
    "make_aligned_components",
    "make_feature_components",
    "make_planted",
    "planted_atoms",
    "planted_captions",
    "planted_feature_components",
    "planted_images",
    "planted_orthogonal_maps",
    "planted_text_encoder",
    "spurious_values",
    "write_named_planted_store",
    "write_planted_store",
]
