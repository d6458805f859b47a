"""What the person sees: the canvas's pixels at the centre of each voxel of the shown
slice, read from a screenshot of the canvas, classified by the overlay's colour."""

from __future__ import annotations

import io

import numpy as np


def slice_positions(page, z: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Canvas positions (CSS px, x and y) of the centres of the voxels of slice ``z``, in the
    server's plane layout, and the plane's shape."""
    out = page.evaluate(
        """z => { const p = window.dilsegPage; const cs = p.cs; const [u, v] = cs.map.planeAxes(cs.axis);
                  const xy = []; const a = [0, 0, 0]; a[cs.axis] = z;
                  for (let i = 0; i < cs.shape[u]; i++) { a[u] = i;
                    for (let j = 0; j < cs.shape[v]; j++) { a[v] = j; xy.push(p.voxelToCanvas(a)) } }
                  return { xy, plane: [cs.shape[u], cs.shape[v]] } }""",
        z,
    )
    return np.asarray(out["xy"], dtype=np.float64), tuple(out["plane"])


def canvas_rgb(page) -> np.ndarray:
    from PIL import Image

    png = page.locator("#gl").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)


def sample(page, z: int) -> np.ndarray:
    """RGB at each voxel centre of slice ``z``: (plane..., 3)."""
    xy, plane = slice_positions(page, z)
    rgb = canvas_rgb(page)
    h, w = rgb.shape[:2]
    x = np.clip(np.floor(xy[:, 0]).astype(int), 0, w - 1)
    y = np.clip(np.floor(xy[:, 1]).astype(int), 0, h - 1)
    return rgb[y, x].reshape(*plane, 3)


def is_result_colour(rgb: np.ndarray) -> np.ndarray:
    """The result overlay (green, 0/230/118) over a grey image: green well above red."""
    return (rgb[..., 1] - rgb[..., 0] > 60).astype(np.uint8)


def is_proxy_colour(rgb: np.ndarray) -> np.ndarray:
    """The proxy overlay (yellow, 255/200/0) over a grey image: red and green well above blue."""
    return ((rgb[..., 0] - rgb[..., 2] > 60) & (rgb[..., 1] - rgb[..., 2] > 40)).astype(np.uint8)
