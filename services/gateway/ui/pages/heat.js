// Saliency drawn as a "hot" heat map: transparent where occlusion changed nothing, red to
// yellow where it cost the model most (the same ramp as the gateway's PNG heat map).

export function drawHeat(canvas, explained) {
  const [rows, cols] = explained.size;
  const peak = Math.max(explained.max, 0);
  const small = document.createElement("canvas");
  small.width = cols;
  small.height = rows;
  const ctx = small.getContext("2d");
  const pixels = ctx.createImageData(cols, rows);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = peak > 0 ? Math.max(explained.saliency[r][c], 0) / peak : 0;
      const i = (r * cols + c) * 4;
      pixels.data[i] = Math.min(1, v * 2) * 255;
      pixels.data[i + 1] = Math.min(1, Math.max(0, v * 2 - 1)) * 255;
      pixels.data[i + 2] = 0;
      pixels.data[i + 3] = v * 255;
    }
  }
  ctx.putImageData(pixels, 0, 0);
  const out = canvas.getContext("2d");
  out.clearRect(0, 0, canvas.width, canvas.height);
  out.imageSmoothingEnabled = true;
  out.drawImage(small, 0, 0, canvas.width, canvas.height);
}
