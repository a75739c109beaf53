"""Writing samples as pictures: image grids and 2-D scatter plots."""
import math

import numpy as np
from PIL import Image


def rows_grid(rows, padding=1, background=1.):
  """A list of rows of (H, W, C) images in [0, 1] → one uint8 picture, a row per list item."""
  h, w, c = np.asarray(rows[0][0]).shape
  cols = max(len(r) for r in rows)
  grid = np.full((len(rows) * (h + padding) + padding, cols * (w + padding) + padding, c), background, np.float32)
  for i, row in enumerate(rows):
    for j, image in enumerate(row):
      top, left = padding + i * (h + padding), padding + j * (w + padding)
      grid[top:top + h, left:left + w] = np.broadcast_to(np.asarray(image, np.float32), (h, w, c))
  return (np.clip(grid, 0., 1.) * 255).round().astype(np.uint8)


def image_grid(images, padding=1):
  """(n, H, W, C) in [0, 1] → a near-square grid, one uint8 array."""
  images = np.asarray(images)
  cols = int(math.ceil(math.sqrt(len(images))))
  return rows_grid([images[i:i + cols] for i in range(0, len(images), cols)], padding)


def save_grid(grid, path, size=256):
  """A uint8 grid as a PNG, scaled up by an integer factor to about `size` pixels."""
  picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  scale = max(1, size // max(grid.shape[:2]))
  picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def save_image_grid(images, path):
  save_grid(image_grid(images), path)


def save_scatter(points, path, labels=None):
  """2-D points as a scatter plot; with `labels`, one colour (and legend entry) per label."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4, 4))
  if labels is None:
    ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5)
  else:
    for label in np.unique(labels):
      chosen = points[labels == label]
      ax.scatter(chosen[:, 0], chosen[:, 1], s=1, alpha=0.5, label=str(label))
    ax.legend(title='label', markerscale=6, fontsize=7)
  ax.set_aspect('equal')
  fig.savefig(path, dpi=100, bbox_inches='tight')
  plt.close(fig)
