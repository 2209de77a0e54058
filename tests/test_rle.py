"""The one mask encoding of the platform (analyze answers, the prediction log, feedback), and
its parity with pycocotools, whose uncompressed RLE it is."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from medops.errors import InvalidInputError
from medops.rle import rle_decode, rle_decode_volume, rle_encode, rle_encode_volume


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


def _coco_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(9)
    shapes = [(1, 1), (7, 5), (32, 48), (256, 256)]
    out = [rng.random(s) > rng.random() for s in shapes]
    out += [np.zeros((6, 4), bool), np.ones((6, 4), bool)]
    first = np.zeros((5, 5), bool)
    first[0, 0] = True  # starts with a set pixel: the counts open with an empty run
    return [*out, first]


@pytest.mark.parametrize("index", range(7))
def test_rle_is_cocos_uncompressed_rle(index: int) -> None:
    mask = _coco_masks()[index]
    ours = rle_encode(mask)
    h, w = mask.shape
    theirs: dict[str, Any] = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    # pycocotools reads our counts as the same mask it compresses from the array
    assert coco_mask.frPyObjects(ours, h, w)["counts"] == theirs["counts"]
    np.testing.assert_array_equal(coco_mask.decode(coco_mask.frPyObjects(ours, h, w)), mask)
    np.testing.assert_array_equal(rle_decode(ours), coco_mask.decode(theirs).astype(bool))
    assert sum(ours["counts"][1::2]) == int(coco_mask.area(theirs))
