"""Data with a known answer: planted dictionaries, captions and stores for tests and demos, and
a real human-annotated caption corpus (Debian's package index)."""

from daskdict.datasets.debian import (
    PackageCorpus,
    debian_packages_from_apt,
    load_debian_packages,
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
    "PackageCorpus",
    "Planted",
    "concept_names",
    "debian_packages_from_apt",
    "load_debian_packages",
    "make_planted",
    "planted_atoms",
    "planted_captions",
    "planted_images",
    "planted_text_encoder",
    "write_named_planted_store",
    "write_planted_store",
]
