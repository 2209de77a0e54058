"""What a reviewer looks at: each slice of an upload, de-identified and scaled for display.

The slices the models see (``medops.transforms.normalise_intensity``, per channel, before any
resize) as 8-bit PNGs at the image's own size, so a mask or heat map drawn over one lines up
pixel for pixel. Three or more channels show as RGB (the first three), fewer as grey.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

from medops.deid import UIDMap
from medops.errors import InvalidInputError
from medops.imaging.upload import ReadUpload, Upload, read_upload
from medops.transforms import normalise_intensity


def slice_png(read: ReadUpload, k: int) -> bytes:
    from PIL import Image as PILImage

    scaled = normalise_intensity(read.image.slice(k))
    pixels = np.clip(np.asarray(scaled) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if pixels.shape[0] >= 3:
        picture = PILImage.fromarray(np.ascontiguousarray(pixels[:3].transpose(1, 2, 0)), "RGB")
    else:
        picture = PILImage.fromarray(pixels[0], "L")
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def preview(
    upload: Upload, deid_key: bytes, slices: Sequence[int] | None = None
) -> dict[str, object]:
    """``{"shape": [z, h, w], "slices": [{"index": k, "png": "data:image/png;base64,..."}]}``;
    the upload is de-identified as an analysis would be (``deid_key``: the plane's)."""
    read = read_upload(upload, UIDMap(deid_key))
    z, h, w = read.image.shape
    wanted = list(range(z)) if slices is None else list(dict.fromkeys(slices))
    bad = [k for k in wanted if not 0 <= k < z]
    if bad:
        raise InvalidInputError(f"slices: {bad} out of range; the image has {z} slice(s)")
    return {
        "shape": [z, h, w],
        "slices": [
            {
                "index": k,
                "png": "data:image/png;base64," + base64.b64encode(slice_png(read, k)).decode(),
            }
            for k in wanted
        ],
    }
