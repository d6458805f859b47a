"""Drawing a 2D mask on the page with mouse events, the way a person would: the fill
tool around each object's outline (NiiVue fills the closed contour), then the brush and
the eraser, one voxel at a time, for whatever the fill got wrong (holes, thin parts)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# clockwise 8-neighbourhood, starting west: (row, col) offsets
_RING = [(0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1)]


def outline(component: np.ndarray) -> list[tuple[int, int]]:
    """The outer boundary of one 8-connected component, pixel by pixel in order
    (Moore-neighbour tracing, stopped when its first move comes round again)."""
    m = np.pad(component.astype(bool), 1)
    rows, cols = np.nonzero(m)
    start = (int(rows[0]), int(cols[0]))  # topmost, then leftmost: its west neighbour is background
    p, b = start, (start[0], start[1] - 1)
    path = [start]
    first = None
    for _ in range(8 * m.size):
        k = _RING.index((b[0] - p[0], b[1] - p[1]))
        for t in range(1, 9):
            d = (k + t) % 8
            c = (p[0] + _RING[d][0], p[1] + _RING[d][1])
            if m[c]:
                prev = _RING[(k + t - 1) % 8]
                nb = (p[0] + prev[0], p[1] + prev[1])  # the last background pixel looked at
                break
        else:
            break  # a single pixel
        if first is None:
            first = (p, c)
        elif (p, c) == first:
            break
        p, b = c, nb
        path.append(p)
    if len(path) > 1 and path[-1] == path[0]:
        path.pop()
    return [(r - 1, c - 1) for r, c in path]


def corners(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pixels of a closed 8-connected chain where its direction changes: a line
    between two of them is a straight horizontal, vertical or diagonal run, which any
    line rasteriser (NiiVue's pen) draws exactly, so the polygon through them is the
    chain itself with far fewer mouse moves."""
    if len(ring) < 3:
        return list(ring)
    n = len(ring)
    keep = []
    for i in range(n):
        a, b, c = ring[i - 1], ring[i], ring[(i + 1) % n]
        if (b[0] - a[0], b[1] - a[1]) != (c[0] - b[0], c[1] - b[1]):
            keep.append(b)
    return keep or [ring[0]]


class Painter:
    """Mouse strokes on the page's canvas for the slice it shows."""

    def __init__(self, page, hook: str = "window.dilsegPage"):
        self.page = page
        self.hook = hook

    def _points(self, z: int, pixels) -> list[tuple[float, float]]:
        box = self.page.locator("#gl").bounding_box()
        xy = self.page.evaluate(
            """([z, px]) => { const p = window.dilsegPage; const cs = p.cs;
                const [u, v] = cs.map.planeAxes(cs.axis);
                return px.map(([i, j]) => { const a = [0, 0, 0]; a[cs.axis] = z; a[u] = i; a[v] = j;
                                            return p.voxelToCanvas(a) }) }""",
            [z, [list(map(int, q)) for q in pixels]],
        )
        return [(box["x"] + x, box["y"] + y) for x, y in xy]

    def tool(self, name: str, size: int = 1) -> None:
        self.page.keyboard.press({"brush": "b", "eraser": "e", "fill": "f"}[name])
        self.page.evaluate(
            "s => { const e = document.getElementById('pen-size'); e.value = String(s); "
            "e.dispatchEvent(new Event('input')) }",
            size,
        )

    def stroke(self, z: int, pixels) -> None:
        pts = self._points(z, pixels)
        m = self.page.mouse
        m.move(*pts[0])
        m.down()
        for p in pts[1:]:
            m.move(*p)
        m.up()

    def click(self, z: int, pixels) -> None:
        m = self.page.mouse
        for p in self._points(z, pixels):
            m.move(*p)
            m.down()
            m.up()

    def page_mask(self, z: int, plane: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.page.evaluate("z => window.dilsegPage.sliceMask(z)", z), dtype=np.uint8).reshape(plane)

    def draw(self, z: int, mask: np.ndarray, max_fixes: int = 4000) -> dict:
        """Draw ``mask`` (the server's plane layout) on slice ``z`` (shown now); returns
        what it took. The page's mask of the slice equals ``mask`` afterwards."""
        mask = np.asarray(mask, dtype=np.uint8)
        lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
        self.tool("fill", 1)
        contour_points = 0
        for c in range(1, n + 1):
            ring = corners(outline(lab == c))
            if len(ring) >= 3:
                self.stroke(z, ring + [ring[0]])
                contour_points += len(ring)
        got = self.page_mask(z, mask.shape)
        missing = np.argwhere((mask == 1) & (got == 0))
        extra = np.argwhere((mask == 0) & (got == 1))
        if len(missing) + len(extra) > max_fixes:
            raise AssertionError(f"the fill left {len(missing)} missing and {len(extra)} extra pixels")
        if len(missing):
            self.tool("brush", 1)
            self.click(z, missing)
        if len(extra):
            self.tool("eraser", 1)
            self.click(z, extra)
        got = self.page_mask(z, mask.shape)
        return {
            "components": int(n),
            "contour_moves": contour_points,
            "brush_clicks": int(len(missing)),
            "eraser_clicks": int(len(extra)),
            "equal": bool(np.array_equal(got, mask)),
        }
