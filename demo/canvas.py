"""What the demo data set's painter (`demo.scene`) draws with: shapes, the canvas, the street's perspective,
the classes' colours and the `Scene` that every layer shares.

A shape is a bounding box and a mask function; the canvas paints a label map, a colour map and a shading map
together, shape by shape, so that labels and pixels align exactly; `Street` maps ground coordinates (lateral metres,
depth) to pixels.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

# ----------------------------------------------------------------------------------------------------------- shapes
# A shape is (bounding box (x0, y0, x1, y1) in pixels, function (ys, xs) -> bool mask), where ys is a column and
# xs a row of pixel-centre coordinates inside the (clipped) box; masks are built only inside the box.

Shape = tuple[tuple[float, float, float, float], Callable[[np.ndarray, np.ndarray], np.ndarray]]


def rect(x0: float, y0: float, x1: float, y1: float) -> Shape:
    return (x0, y0, x1, y1), lambda ys, xs: (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def ellipse(cx: float, cy: float, rx: float, ry: float) -> Shape:
    rx, ry = max(rx, 0.5), max(ry, 0.5)
    return (cx - rx, cy - ry, cx + rx, cy + ry), lambda ys, xs: ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0


def ring(cx: float, cy: float, r_out: float, r_in: float) -> Shape:
    r_out = max(r_out, 1.0)

    def mask(ys, xs):
        d2 = (xs - cx) ** 2 + (ys - cy) ** 2
        return (d2 <= r_out * r_out) & (d2 >= r_in * r_in)

    return (cx - r_out, cy - r_out, cx + r_out, cy + r_out), mask


def capsule(ax: float, ay: float, bx: float, by: float, r: float) -> Shape:
    """A thick line segment with round ends (radius r)."""
    dx, dy = bx - ax, by - ay
    n2 = max(dx * dx + dy * dy, 1e-9)

    def mask(ys, xs):
        px, py = xs - ax, ys - ay
        h = np.clip((px * dx + py * dy) / n2, 0.0, 1.0)
        return (px - h * dx) ** 2 + (py - h * dy) ** 2 <= r * r

    return (min(ax, bx) - r, min(ay, by) - r, max(ax, bx) + r, max(ay, by) + r), mask


def polygon(points: list[tuple[float, float]]) -> Shape:
    """A convex polygon (vertices in either order around it)."""
    pts = [(float(x), float(y)) for x, y in points]
    edges = list(zip(pts, pts[1:] + pts[:1]))
    sign = 1.0 if sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in edges) >= 0 else -1.0

    def mask(ys, xs):
        inside = None
        for (x0, y0), (x1, y1) in edges:
            side = ((x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)) * sign >= 0
            inside = side if inside is None else inside & side
        return inside

    xs_, ys_ = [p[0] for p in pts], [p[1] for p in pts]
    return (min(xs_), min(ys_), max(xs_), max(ys_)), mask


@dataclass
class Region:
    """Where a shape was painted: the slices of its box, its coordinate grids and its mask."""

    sl: tuple[slice, slice]
    ys: np.ndarray
    xs: np.ndarray
    mask: np.ndarray


class Canvas:
    """A label map, a colour map and a shading map, painted together shape by shape (later shapes cover earlier)."""

    def __init__(self, width: int, height: int):
        self.w, self.h = width, height
        self.label = np.zeros((height, width), np.uint8)
        self.colour = np.zeros((height, width, 3), np.float32)
        self.shade = np.ones((height, width), np.float32)

    def _region(self, shape: Shape) -> Region | None:
        (x0, y0, x1, y1), fn = shape
        xa, xb = max(int(math.floor(x0)), 0), min(int(math.ceil(x1)), self.w)
        ya, yb = max(int(math.floor(y0)), 0), min(int(math.ceil(y1)), self.h)
        if xa >= xb or ya >= yb:
            return None
        ys = (np.arange(ya, yb, dtype=np.float32) + 0.5)[:, None]
        xs = (np.arange(xa, xb, dtype=np.float32) + 0.5)[None, :]
        mask = np.broadcast_to(fn(ys, xs), (yb - ya, xb - xa))
        if not mask.any():
            return None
        return Region((slice(ya, yb), slice(xa, xb)), ys, xs, mask)

    def draw(self, shape: Shape, label_id: int, colour, shade: tuple[float, float] = (1.0, 1.0)) -> Region | None:
        """Paint `shape` with a label and a colour; shade runs linearly from its top to its bottom."""
        region = self._region(shape)
        if region is None:
            return None
        sl, mask = region.sl, region.mask
        self.label[sl][mask] = label_id
        self.colour[sl][mask] = np.asarray(colour, np.float32)
        top, bottom = shade
        if top == bottom:
            self.shade[sl][mask] = top
        else:
            y0, y1 = shape[0][1], shape[0][3]
            ramp = top + (bottom - top) * np.clip((region.ys - y0) / max(y1 - y0, 1e-6), 0.0, 1.0)
            self.shade[sl][mask] = np.broadcast_to(ramp, mask.shape)[mask]
        return region

    def recolour(self, region: Region | None, where: np.ndarray, colour) -> None:
        """Change the colour (not the label) of the part of a painted region where `where` holds."""
        if region is not None:
            self.colour[region.sl][region.mask & where] = np.asarray(colour, np.float32)

    def darken(self, shape: Shape, factor: float) -> None:
        """Multiply the shading inside a shape (a shadow): labels and colours stay."""
        region = self._region(shape)
        if region is not None:
            self.shade[region.sl][region.mask] *= factor


# ------------------------------------------------------------------------------------------------------- colours


def vary(rng: np.random.Generator, colour, spread: float) -> np.ndarray:
    """One object's colour: the class colour plus a little of its own."""
    return np.clip(np.asarray(colour, np.float64) + rng.normal(0.0, spread, 3), 0, 255)


def mix(a, b, w: float) -> np.ndarray:
    return (1.0 - w) * np.asarray(a, np.float64) + w * np.asarray(b, np.float64)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Gaussian noise on a grid of `cell` pixels, bilinearly interpolated to h x w."""
    gh, gw = h // cell + 2, w // cell + 2
    low = Image.fromarray(rng.standard_normal((gh, gw), dtype=np.float32))
    return np.asarray(low.resize((gw * cell, gh * cell), Image.BILINEAR), np.float32)[:h, :w]


class Street:
    """The street's perspective: a flat ground seen by a camera at height cam_h looking along the street.

    A ground point at lateral offset `lat` metres and depth parameter t (t = 1 at the bottom row, t -> 0 at the
    horizon) is at pixel (vx + lat * P * t, yh + G * t); an object of height h metres there is h * P * t pixels tall.
    """

    def __init__(self, rng: np.random.Generator, width: int, height: int):
        self.w, self.h = width, height
        self.yh = height * rng.uniform(0.36, 0.46)  # horizon row
        self.vx = width * rng.uniform(0.42, 0.58)  # vanishing point column
        self.g = height - self.yh  # rows of ground
        self.p = self.g / rng.uniform(2.4, 3.2)  # pixels per metre at t = 1
        self.d0 = 4.0  # depth (metres) of the bottom row, for patterns

    def x(self, lat: float, t: float) -> float:
        return self.vx + lat * self.p * t

    def y(self, t: float) -> float:
        return self.yh + self.g * t

    def m(self, t: float) -> float:
        """Pixels per metre at depth t."""
        return self.p * t

    def t_inside(self, lat: float, margin: float) -> float:
        """The largest t at which the ground point at `lat` is still `margin` pixels inside the image."""
        room = (self.vx - margin) if lat < 0 else (self.w - margin - self.vx)
        return room / max(abs(lat) * self.p, 1e-6)

    def ground_strip(self, lat_a: float, lat_b: float) -> Shape:
        """The ground between two lines along the street, from the horizon to the bottom row."""
        return polygon([(self.vx, self.yh), (self.x(lat_a, 1.0), self.h), (self.x(lat_b, 1.0), self.h)])

    def ground_coords(self, region: Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t, lateral metres, depth metres) of the pixels of a ground region."""
        t = np.maximum((region.ys - self.yh) / self.g, 1e-3)
        lat = (region.xs - self.vx) / (self.p * t)
        return t, lat, self.d0 / t

    def wall(self, lat: float, t_near: float, t_far: float, height_m: float) -> Shape:
        """A vertical plane along the street at `lat`, between two depths, `height_m` metres high."""
        xa, xb = self.x(lat, t_near), self.x(lat, t_far)
        ya, yb = self.y(t_near), self.y(t_far)
        return polygon([(xa, ya), (xa, ya - height_m * self.m(t_near)), (xb, yb - height_m * self.m(t_far)), (xb, yb)])

    def wall_coords(self, region: Region, lat: float) -> tuple[np.ndarray, np.ndarray]:
        """(height above ground in metres, depth in metres) of the pixels of a region painted by `wall`."""
        t = np.maximum((region.xs - self.vx) / (lat * self.p), 1e-3)
        return (self.yh + self.g * t - region.ys) / (self.p * t), self.d0 / t


def frac(a: np.ndarray) -> np.ndarray:
    return a - np.floor(a)


# ------------------------------------------------------------------------------------------------- classes
# Cityscapes label ids (not train ids)
UNLABELED, EGO_VEHICLE, OUT_OF_ROI, STATIC, GROUND = 0, 1, 3, 4, 6
ROAD, SIDEWALK, BUILDING, WALL, FENCE = 7, 8, 11, 12, 13
POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 17, 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, BICYCLE = 24, 25, 26, 27, 28, 33

# base colour of each class (jittered per image in hue, saturation and brightness)
BASE_COLOURS = {
    UNLABELED: (120, 110, 100),
    EGO_VEHICLE: (38, 38, 44),
    OUT_OF_ROI: (6, 6, 6),
    STATIC: (105, 95, 70),
    GROUND: (125, 115, 100),
    ROAD: (88, 86, 94),
    SIDEWALK: (172, 150, 150),
    BUILDING: (150, 110, 88),
    WALL: (192, 182, 150),
    FENCE: (140, 112, 75),
    POLE: (165, 168, 182),
    TRAFFIC_LIGHT: (44, 46, 36),
    TRAFFIC_SIGN: (228, 205, 40),
    VEGETATION: (58, 118, 42),
    TERRAIN: (150, 168, 82),
    SKY: (122, 170, 235),
    PERSON: (200, 58, 70),
    RIDER: (238, 125, 35),
    CAR: (32, 62, 152),
    TRUCK: (125, 82, 165),
    BUS: (40, 152, 160),
    BICYCLE: (175, 40, 175),
}

# texture amplitude (grey levels) per label id: (pixel noise, fine blotches, coarse blotches)
_TEXTURE = {
    SKY: (1.5, 1.0, 6.0),
    ROAD: (7.0, 3.0, 6.0),
    SIDEWALK: (5.0, 3.0, 6.0),
    BUILDING: (4.0, 4.0, 10.0),
    WALL: (4.0, 3.0, 8.0),
    FENCE: (3.0, 2.0, 5.0),
    POLE: (2.0, 1.0, 3.0),
    TRAFFIC_LIGHT: (2.0, 1.0, 2.0),
    TRAFFIC_SIGN: (2.0, 1.0, 2.0),
    VEGETATION: (13.0, 15.0, 10.0),
    TERRAIN: (10.0, 7.0, 10.0),
    PERSON: (4.0, 3.0, 4.0),
    RIDER: (4.0, 3.0, 4.0),
    CAR: (2.0, 1.0, 3.0),
    TRUCK: (3.0, 2.0, 4.0),
    BUS: (3.0, 2.0, 4.0),
    BICYCLE: (3.0, 1.0, 2.0),
    EGO_VEHICLE: (2.0, 1.0, 3.0),
    OUT_OF_ROI: (1.0, 0.0, 0.0),
    STATIC: (5.0, 3.0, 5.0),
    GROUND: (8.0, 4.0, 8.0),
    UNLABELED: (6.0, 4.0, 6.0),
}
TEXTURE_TABLE = np.full((256, 3), (5.0, 3.0, 5.0), np.float32)
for _id, _amp in _TEXTURE.items():
    TEXTURE_TABLE[_id] = _amp


def palette(rng: np.random.Generator) -> dict[int, np.ndarray]:
    """The base colours with this image's jitter: hue, saturation and brightness per class, a colour cast overall."""
    cast = rng.normal(0.0, 5.0, 3)
    palette = {}
    for label_id, rgb in BASE_COLOURS.items():
        h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
        h = (h + rng.normal(0.0, 0.015)) % 1.0
        s = min(max(s * rng.uniform(0.85, 1.15), 0.0), 1.0)
        v = min(max(v * rng.uniform(0.88, 1.12), 0.0), 1.0)
        palette[label_id] = np.clip(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0 + cast, 0, 255)
    return palette


class Scene:
    """What every layer shares: the canvas, this image's palette and perspective, the street's cross-section and
    the standing objects queued for depth-sorted drawing."""

    def __init__(self, rng: np.random.Generator, width: int, height: int):
        self.rng, self.W, self.H = rng, width, height
        self.cv = Canvas(width, height)
        self.pal = palette(rng)
        self.st = Street(rng, width, height)
        self.sun = 1 if rng.random() < 0.5 else -1  # which side's facades are lit
        self.min_w = width / 60.0  # poles, signs and lights are never thinner than this
        self.objects: list[tuple[float, Callable[[], None]]] = []  # (depth t, draw): drawn far to near

    def side(self) -> int:
        return -1 if self.rng.random() < 0.5 else 1

    def add(self, order: float, fn: Callable[..., None], *args) -> None:
        """Queue a standing object; its own random draws happen when it is drawn, in depth order."""
        self.objects.append((float(order), lambda: fn(self, *args)))

    def draw_objects(self) -> None:
        for _, draw in sorted(self.objects, key=lambda item: item[0]):  # stable: equal depths keep their order
            draw()
