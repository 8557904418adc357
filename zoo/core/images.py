"""Image grids for sample sheets (flows, GANs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(images_uint8: np.ndarray, columns: int = 8) -> np.ndarray:
    """``[N, H, W, C]`` uint8 -> one ``[rows·H, columns·W, C]`` image (1-px gaps)."""
    n, h, w, c = images_uint8.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + 1) + 1, columns * (w + 1) + 1, c), np.uint8)
    for i, img in enumerate(images_uint8):
        r, col = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = img
    return grid


def save_grid(images_uint8: np.ndarray, path: Path, columns: int = 8, scale: int = 2):
    grid = image_grid(images_uint8, columns)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
