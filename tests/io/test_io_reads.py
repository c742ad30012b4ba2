"""Values that K-SVD cannot use, refused when data in memory is read."""

import dask.array as da
import numpy as np
import pytest

from daskdict.errors import InvalidInputError
from daskdict.io import as_dask_array, bad_rows, check_finite_rows


@pytest.mark.parametrize("value", [3e38, -3e38, 1e20])
def test_values_whose_squares_overflow_float32_are_refused(rng, value):
    data = rng.standard_normal((50, 8)).astype(np.float32)
    data[7, 2] = value
    data[30, 0] = value
    with pytest.raises(InvalidInputError) as info:
        as_dask_array(data)
    message = str(info.value)
    assert "2 row(s)" in message and "overflows float32" in message, message
    assert "row 7" in message and "Scale the data down" in message, message


def test_large_values_whose_squares_fit_are_accepted(rng):
    data = rng.standard_normal((50, 4)) * 1e17  # squared norms about 1e35
    array, _ = as_dask_array(data)
    np.testing.assert_array_equal(array.compute(), data)


def test_non_finite_rows_in_memory_are_counted(rng):
    data = rng.standard_normal((40, 3))
    data[3, 1] = np.nan
    data[9, 0] = np.inf
    with pytest.raises(InvalidInputError, match=r"2 row\(s\) with NaN or inf.*row 3"):
        as_dask_array(data)
    # a dask array is checked where its blocks are computed, not here
    as_dask_array(da.from_array(data, chunks=(20, 3)))


def test_bad_rows_and_offset(rng):
    block = rng.standard_normal((6, 3)).astype(np.float32)
    block[1, 0] = np.nan
    block[4] = 2e19
    non_finite, overflowing = bad_rows(block)
    assert non_finite.tolist() == [False, True, False, False, False, False]
    assert overflowing.tolist() == [False, False, False, False, True, False]
    block[1, 0] = 0.0
    with pytest.raises(InvalidInputError, match="first at row 104"):
        check_finite_rows(block, offset=100)
