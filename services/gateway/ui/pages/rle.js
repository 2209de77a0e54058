// COCO's uncompressed RLE, as medops/rle.py writes and reads it: pixels in column-major order,
// counts alternating runs of 0 and 1, starting with 0.

/** Decode {size: [h, w], counts} into a row-major Uint8Array of 0/1. */
export function decode(rle) {
  const [h, w] = rle.size;
  const mask = new Uint8Array(h * w);
  let pos = 0;
  let value = 0;
  for (const run of rle.counts) {
    if (value) {
      for (let i = pos; i < pos + run; i++) {
        const col = Math.floor(i / h);
        const row = i - col * h;
        mask[row * w + col] = 1;
      }
    }
    pos += run;
    value = 1 - value;
  }
  return mask;
}

/** Encode a row-major 0/1 mask of h rows and w columns. */
export function encode(mask, h, w) {
  const counts = [];
  let value = 0;
  let run = 0;
  for (let col = 0; col < w; col++) {
    for (let row = 0; row < h; row++) {
      const v = mask[row * w + col] ? 1 : 0;
      if (v === value) {
        run += 1;
      } else {
        counts.push(run);
        value = v;
        run = 1;
      }
    }
  }
  counts.push(run);
  return { size: [h, w], counts };
}
