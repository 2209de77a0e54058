"""The one mask encoding of the platform (analyze answers, the prediction log, feedback)."""

from __future__ import annotations

import numpy as np
import pytest

from medops.errors import InvalidInputError
from medops.rle import rle_decode_volume, rle_encode, rle_encode_volume


def test_volumes_round_trip_slice_by_slice_whatever_value_each_slice_starts_with() -> None:
    volume = np.array(
        [[[1, 1, 0], [0, 1, 1]], [[0, 0, 1], [1, 1, 0]], [[0, 0, 0], [0, 0, 0]]], dtype=np.uint8
    )
    slices = rle_encode_volume(volume)
    assert [s["size"] for s in slices] == [[2, 3]] * 3
    assert slices[0]["counts"][0] == 0  # a slice starting with 1 opens with an empty run
    assert slices == [rle_encode(m) for m in volume]
    np.testing.assert_array_equal(rle_decode_volume(slices), volume.astype(bool))


def test_a_volume_needs_three_dimensions_and_at_least_one_slice() -> None:
    with pytest.raises(InvalidInputError, match="3D"):
        rle_encode_volume(np.zeros((2, 2)))
    with pytest.raises(InvalidInputError, match="no slices"):
        rle_decode_volume([])
