"""On-disk formats: headers and kinds, atomic writes, embedding stores, and reads of every
supported source (the lowest layer of daskdict: it imports no other stage)."""

from daskdict.io.atomic import (
    atomic_group,
    atomic_replace,
    readable_path,
    recover_replaced,
    temporary_sibling,
    write_text,
)
from daskdict.io.formats import (
    FORMAT_VERSION,
    check_output,
    check_writable,
    describe,
    kind_of,
    load,
    open_kind,
    read_header,
    update_header,
    write_header,
)
from daskdict.io.reads import (
    as_dask_array,
    bad_rows,
    check_finite_rows,
    check_matrix,
    default_chunk_rows,
    flagged_rows,
    open_rows,
    zarr_to_dask,
)
from daskdict.io.resources import n_cores
from daskdict.io.store import (
    EmbeddingStore,
    create_store,
    open_store,
    write_store_header,
    write_vector,
)

__all__ = [
    "FORMAT_VERSION",
    "EmbeddingStore",
    "as_dask_array",
    "atomic_group",
    "atomic_replace",
    "bad_rows",
    "check_finite_rows",
    "check_matrix",
    "check_output",
    "check_writable",
    "create_store",
    "default_chunk_rows",
    "describe",
    "flagged_rows",
    "kind_of",
    "load",
    "n_cores",
    "open_kind",
    "open_rows",
    "open_store",
    "read_header",
    "readable_path",
    "recover_replaced",
    "temporary_sibling",
    "update_header",
    "write_header",
    "write_store_header",
    "write_text",
    "write_vector",
    "zarr_to_dask",
]
