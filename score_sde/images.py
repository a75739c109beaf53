"""Writing samples as pictures: image grids and 2-D scatter plots."""
import math

import numpy as np
from PIL import Image


def image_grid(images, padding=1):
  """(n, H, W, C) in [0, 1] → one (rows·(H+p), cols·(W+p), C) uint8 array."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  cols = int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  grid = np.ones((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.float32)
  for i, image in enumerate(images):
    r, q = divmod(i, cols)
    grid[padding + r * (h + padding):padding + r * (h + padding) + h,
         padding + q * (w + padding):padding + q * (w + padding) + w] = image
  return (np.clip(grid, 0., 1.) * 255).round().astype(np.uint8)


def save_image_grid(images, path, scale=None):
  grid = image_grid(images)
  picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  scale = scale or max(1, 256 // max(grid.shape[:2]))
  picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def save_scatter(points, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5)
  ax.set_aspect('equal')
  fig.savefig(path, dpi=100, bbox_inches='tight')
  plt.close(fig)
