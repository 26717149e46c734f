"""A small synthetic data set of street scenes, written in the exact layout of Cityscapes.

Why: the real Cityscapes cannot be downloaded here (it needs an account and a network), yet the tests and the
quick start must train and evaluate end to end. So this module paints simple street scenes (sky, road in
perspective, sidewalks, facades, trees, poles with signs and traffic lights, cars, buses, persons, cyclists, and
void regions such as the ego vehicle) and writes them as

    <root>/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png   (8-bit RGB)
    <root>/gtFine/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_gtFine_labelIds.png    (8-bit 'L', label ids 0..33)

so that `torchvision.datasets.Cityscapes(root, split, mode='fine', target_type='semantic')`, the loader used for
the real data, reads it unchanged. The label maps hold Cityscapes label *ids* (not train ids): the usual id ->
train id mapping applies, and the void ids (unlabeled, ego vehicle, out of roi, static, ...) occur too.

Each class has its own base colour, jittered per image, with some texture, shading and noise, and the objects vary
in number, position and size, so a small network learns it from colour, texture and position within minutes on a
CPU without the task being trivial. The label map and the image are painted from the same shapes (painter's
algorithm, vectorised numpy masks), so they align exactly.

Every image is a pure function of (seed, split, index): the same parameters give byte-identical files. The set is
generated once: `<root>/demo_manifest.json`, written last, records the parameters, and a call with the same
parameters returns at once.

    python -m training.demo_data --root data/demo_cityscapes --train 60 --val 20 --size 1024x512 --seed 0
"""
from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from training.errors import UserError, run_cli

__all__ = ["DEMO_DIR", "MANIFEST_NAME", "TRAIN_CITIES", "VAL_CITIES", "make_demo_dataset", "ensure_demo_dataset",
           "main"]

DEMO_DIR = Path("data/demo_cityscapes")   # relative to the repository root
MANIFEST_NAME = "demo_manifest.json"      # written last: its presence means the set is complete
MARKER_NAME = ".demo_generator"           # written first: this folder's leftImg8bit/ and gtFine/ are ours to replace
GENERATOR_VERSION = 1                     # bump when the drawing changes, so that old sets are regenerated
TRAIN_CITIES = ("aachen", "bochum", "bremen")
VAL_CITIES = ("frankfurt", "lindau")
SPLITS = {"train": (0, TRAIN_CITIES), "val": (1, VAL_CITIES)}
FRAME = 19                                # Cityscapes' annotated frame of each sequence is number 19
PNG_COMPRESS_LEVEL = 1                    # the images are noisy: more compression buys little
MIN_SIZE = (64, 32)

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
    SKY: (1.5, 1.0, 6.0), ROAD: (7.0, 3.0, 6.0), SIDEWALK: (5.0, 3.0, 6.0), BUILDING: (4.0, 4.0, 10.0),
    WALL: (4.0, 3.0, 8.0), FENCE: (3.0, 2.0, 5.0), POLE: (2.0, 1.0, 3.0), TRAFFIC_LIGHT: (2.0, 1.0, 2.0),
    TRAFFIC_SIGN: (2.0, 1.0, 2.0), VEGETATION: (13.0, 15.0, 10.0), TERRAIN: (10.0, 7.0, 10.0),
    PERSON: (4.0, 3.0, 4.0), RIDER: (4.0, 3.0, 4.0), CAR: (2.0, 1.0, 3.0), TRUCK: (3.0, 2.0, 4.0),
    BUS: (3.0, 2.0, 4.0), BICYCLE: (3.0, 1.0, 2.0), EGO_VEHICLE: (2.0, 1.0, 3.0), OUT_OF_ROI: (1.0, 0.0, 0.0),
    STATIC: (5.0, 3.0, 5.0), GROUND: (8.0, 4.0, 8.0), UNLABELED: (6.0, 4.0, 6.0),
}
_TEX_TABLE = np.full((256, 3), (5.0, 3.0, 5.0), np.float32)
for _id, _amp in _TEXTURE.items():
    _TEX_TABLE[_id] = _amp


# ----------------------------------------------------------------------------------------------------------- shapes
# A shape is (bounding box (x0, y0, x1, y1) in pixels, function (ys, xs) -> bool mask), where ys is a column and
# xs a row of pixel-centre coordinates inside the (clipped) box; masks are built only inside the box.

Shape = tuple[tuple[float, float, float, float], Callable[[np.ndarray, np.ndarray], np.ndarray]]


def _rect(x0: float, y0: float, x1: float, y1: float) -> Shape:
    return (x0, y0, x1, y1), lambda ys, xs: (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> Shape:
    rx, ry = max(rx, 0.5), max(ry, 0.5)
    return (cx - rx, cy - ry, cx + rx, cy + ry), lambda ys, xs: ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0


def _ring(cx: float, cy: float, r_out: float, r_in: float) -> Shape:
    r_out = max(r_out, 1.0)

    def mask(ys, xs):
        d2 = (xs - cx) ** 2 + (ys - cy) ** 2
        return (d2 <= r_out * r_out) & (d2 >= r_in * r_in)
    return (cx - r_out, cy - r_out, cx + r_out, cy + r_out), mask


def _capsule(ax: float, ay: float, bx: float, by: float, r: float) -> Shape:
    """A thick line segment with round ends (radius r)."""
    dx, dy = bx - ax, by - ay
    n2 = max(dx * dx + dy * dy, 1e-9)

    def mask(ys, xs):
        px, py = xs - ax, ys - ay
        h = np.clip((px * dx + py * dy) / n2, 0.0, 1.0)
        return (px - h * dx) ** 2 + (py - h * dy) ** 2 <= r * r
    return (min(ax, bx) - r, min(ay, by) - r, max(ax, bx) + r, max(ay, by) + r), mask


def _polygon(points: list[tuple[float, float]]) -> Shape:
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
class _Region:
    """Where a shape was painted: the slices of its box, its coordinate grids and its mask."""

    sl: tuple[slice, slice]
    ys: np.ndarray
    xs: np.ndarray
    mask: np.ndarray


class _Canvas:
    """A label map, a colour map and a shading map, painted together shape by shape (later shapes cover earlier)."""

    def __init__(self, width: int, height: int):
        self.w, self.h = width, height
        self.label = np.zeros((height, width), np.uint8)
        self.colour = np.zeros((height, width, 3), np.float32)
        self.shade = np.ones((height, width), np.float32)

    def _region(self, shape: Shape) -> _Region | None:
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
        return _Region((slice(ya, yb), slice(xa, xb)), ys, xs, mask)

    def draw(self, shape: Shape, label_id: int, colour, shade: tuple[float, float] = (1.0, 1.0)) -> _Region | None:
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

    def recolour(self, region: _Region | None, where: np.ndarray, colour) -> None:
        """Change the colour (not the label) of the part of a painted region where `where` holds."""
        if region is not None:
            self.colour[region.sl][region.mask & where] = np.asarray(colour, np.float32)

    def darken(self, shape: Shape, factor: float) -> None:
        """Multiply the shading inside a shape (a shadow): labels and colours stay."""
        region = self._region(shape)
        if region is not None:
            self.shade[region.sl][region.mask] *= factor


# ------------------------------------------------------------------------------------------------------------ scene


def _palette(rng: np.random.Generator) -> dict[int, np.ndarray]:
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


def _vary(rng: np.random.Generator, colour, spread: float) -> np.ndarray:
    """One object's colour: the class colour plus a little of its own."""
    return np.clip(np.asarray(colour, np.float64) + rng.normal(0.0, spread, 3), 0, 255)


def _mix(a, b, w: float) -> np.ndarray:
    return (1.0 - w) * np.asarray(a, np.float64) + w * np.asarray(b, np.float64)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Gaussian noise on a grid of `cell` pixels, bilinearly interpolated to h x w."""
    gh, gw = h // cell + 2, w // cell + 2
    low = Image.fromarray(rng.standard_normal((gh, gw), dtype=np.float32))
    return np.asarray(low.resize((gw * cell, gh * cell), Image.BILINEAR), np.float32)[:h, :w]


class _Street:
    """The street's perspective: a flat ground seen by a camera at height cam_h looking along the street.

    A ground point at lateral offset `lat` metres and depth parameter t (t = 1 at the bottom row, t -> 0 at the
    horizon) is at pixel (vx + lat * P * t, yh + G * t); an object of height h metres there is h * P * t pixels tall.
    """

    def __init__(self, rng: np.random.Generator, width: int, height: int):
        self.w, self.h = width, height
        self.yh = height * rng.uniform(0.36, 0.46)       # horizon row
        self.vx = width * rng.uniform(0.42, 0.58)        # vanishing point column
        self.g = height - self.yh                        # rows of ground
        self.p = self.g / rng.uniform(2.4, 3.2)          # pixels per metre at t = 1
        self.d0 = 4.0                                    # depth (metres) of the bottom row, for patterns

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
        return _polygon([(self.vx, self.yh), (self.x(lat_a, 1.0), self.h), (self.x(lat_b, 1.0), self.h)])

    def ground_coords(self, region: _Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t, lateral metres, depth metres) of the pixels of a ground region."""
        t = np.maximum((region.ys - self.yh) / self.g, 1e-3)
        lat = (region.xs - self.vx) / (self.p * t)
        return t, lat, self.d0 / t

    def wall(self, lat: float, t_near: float, t_far: float, height_m: float) -> Shape:
        """A vertical plane along the street at `lat`, between two depths, `height_m` metres high."""
        xa, xb = self.x(lat, t_near), self.x(lat, t_far)
        ya, yb = self.y(t_near), self.y(t_far)
        return _polygon([(xa, ya), (xa, ya - height_m * self.m(t_near)), (xb, yb - height_m * self.m(t_far)),
                         (xb, yb)])

    def wall_coords(self, region: _Region, lat: float) -> tuple[np.ndarray, np.ndarray]:
        """(height above ground in metres, depth in metres) of the pixels of a region painted by `wall`."""
        t = np.maximum((region.xs - self.vx) / (lat * self.p), 1e-3)
        return (self.yh + self.g * t - region.ys) / (self.p * t), self.d0 / t


def _frac(a: np.ndarray) -> np.ndarray:
    return a - np.floor(a)


def _draw_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint one street scene: returns (RGB image uint8 H x W x 3, label ids uint8 H x W)."""
    W, H = width, height
    cv = _Canvas(W, H)
    pal = _palette(rng)
    st = _Street(rng, W, H)
    sun = 1 if rng.random() < 0.5 else -1              # which side's facades are lit
    min_w = W / 60.0                                   # poles, signs and lights are never thinner than this

    # sky, with a few clouds
    cv.draw(_rect(0, 0, W, st.yh + 1), SKY, pal[SKY], shade=(0.82, 1.12))
    for _ in range(rng.integers(0, 4)):
        rx = W * rng.uniform(0.05, 0.15)
        cv.draw(_ellipse(rng.uniform(0, W), rng.uniform(0, st.yh * 0.7), rx, rx * rng.uniform(0.15, 0.35)), SKY,
                _mix(pal[SKY], (236, 238, 244), rng.uniform(0.5, 0.8)))

    # the street's cross-section (lateral metres): road, curbs, sidewalks, a strip of terrain or ground, facades
    rc, hw = rng.uniform(-1.2, 1.2), rng.uniform(3.0, 4.6)
    curb = {s: rc + s * hw for s in (-1, 1)}
    walk = {s: curb[s] + s * rng.uniform(2.0, 4.0) for s in (-1, 1)}
    grass_side = -1 if rng.random() < 0.5 else 1       # one side always has a strip of terrain
    strip_label, front = {}, {}
    for s in (-1, 1):
        kind = "terrain" if s == grass_side else rng.choice(["terrain", "ground", "none"], p=[0.5, 0.2, 0.3])
        strip_label[s] = GROUND if kind == "ground" else TERRAIN
        front[s] = walk[s] + s * (rng.uniform(1.0, 3.0) if kind != "none" else 0.0)

    # ground: strips, then sidewalks (tiles, curb stones), then the road (markings)
    cv.draw(_rect(0, st.yh, st.vx, H), strip_label[-1], pal[strip_label[-1]], shade=(0.95, 1.05))
    cv.draw(_rect(st.vx, st.yh, W, H), strip_label[1], pal[strip_label[1]], shade=(0.95, 1.05))
    tile = rng.uniform(1.0, 2.0)
    for s in (-1, 1):
        region = cv.draw(st.ground_strip(curb[s], walk[s]), SIDEWALK, pal[SIDEWALK], shade=(0.95, 1.05))
        if region is not None:
            _, lat, depth = st.ground_coords(region)
            joints = (_frac(depth / tile) < 0.08) | (_frac(lat / tile) < 0.08)
            cv.recolour(region, joints, pal[SIDEWALK] * 0.8)
        cv.draw(st.ground_strip(curb[s], curb[s] + s * 0.3), SIDEWALK, _mix(pal[SIDEWALK], (215, 215, 210), 0.5))
    road = cv.draw(st.ground_strip(curb[-1], curb[1]), ROAD, pal[ROAD], shade=(1.08, 0.95))
    if road is not None:
        _, lat, depth = st.ground_coords(road)
        paint = _mix(pal[ROAD], (235, 235, 230), 0.85)
        dash = rng.uniform(3.0, 6.0)
        marks = (np.abs(lat - rc) < 0.08) & (_frac(depth / (2 * dash)) < 0.5)
        if rng.random() < 0.6:
            marks |= np.abs(np.abs(lat - rc) - (hw - 0.4)) < 0.07
        if rng.random() < 0.3:                          # a zebra crossing
            d_cross = rng.uniform(6.0, 20.0)
            marks |= (depth > d_cross) & (depth < d_cross + 4.0) & (_frac(lat / 1.0) < 0.5)
        cv.recolour(road, marks, paint)

    # far buildings (and tree tops) around the vanishing point
    x = st.vx - W * rng.uniform(0.15, 0.25)
    x_end = st.vx + W * rng.uniform(0.15, 0.25)
    while x < x_end:
        bw = W * rng.uniform(0.02, 0.06)
        top = st.yh - st.g * rng.uniform(0.03, 0.22)
        if rng.random() < 0.8:
            cv.draw(_rect(x, top, x + bw, st.yh + 2), BUILDING,
                    _mix(_vary(rng, pal[BUILDING], 14), pal[SKY], 0.3))
        else:
            cv.draw(_ellipse(x + bw / 2, st.yh - (st.yh - top) / 2, bw * 0.7, (st.yh - top) / 2 + 2), VEGETATION,
                    _mix(pal[VEGETATION], pal[SKY], 0.2))
        x += bw

    # facades along both sides, in depth slices; windows in perspective; now and then a gap or a row of trees
    for s in (-1, 1):
        lat_f = front[s]
        t_edge = st.t_inside(lat_f, 0.0)
        z, z_far = rng.uniform(0.5, 0.9) / t_edge, 30.0   # z = 1 / t
        lit = 1.05 if s == sun else 0.8
        while z < z_far:
            z_next = z * rng.uniform(1.15, 1.5)
            t_near, t_far = 1.0 / z, 1.0 / z_next
            kind = rng.choice(["building", "gap", "trees"], p=[0.8, 0.08, 0.12])
            if kind == "building":
                height_m = rng.uniform(7.0, 22.0)
                colour = _vary(rng, pal[BUILDING], 16)
                region = cv.draw(st.wall(lat_f, t_near, t_far, height_m), BUILDING, colour, shade=(lit, lit * 0.92))
                if region is not None and abs(st.x(lat_f, t_near) - st.x(lat_f, t_far)) > 6:
                    up, depth = st.wall_coords(region, lat_f)
                    spacing, floor = rng.uniform(2.5, 4.0), rng.uniform(2.8, 3.6)
                    windows = ((_frac(depth / spacing) > 0.25) & (_frac(depth / spacing) < 0.7)
                               & (_frac(up / floor) > 0.35) & (_frac(up / floor) < 0.8)
                               & (up > floor) & (up < height_m - 1.0))
                    glass = _vary(rng, (55, 65, 85), 8)
                    cv.recolour(region, windows, glass)
                    if rng.random() < 0.5:              # shop windows on the ground floor
                        cv.recolour(region, (up > 0.4) & (up < 2.6) & (_frac(depth / 5.0) < 0.7), glass * 1.2)
            elif kind == "trees":
                for t_tree in np.linspace(t_near, t_far, 3):
                    m = st.m(t_tree)
                    cv.draw(_ellipse(st.x(lat_f, t_tree), st.y(t_tree) - 3.5 * m, 2.5 * m, 3.0 * m), VEGETATION,
                            _vary(rng, pal[VEGETATION], 10), shade=(1.05, 0.85))
            z = z_next

    # walls, fences and hedges just in front of the facades
    for s in (-1, 1):
        if rng.random() < 0.6:
            lat = front[s] - s * 0.2
            z0 = max(1.0 / st.t_inside(lat, 0.0), 1.0) * rng.uniform(1.0, 2.0)
            t_near, t_far = 1.0 / z0, 1.0 / (z0 * rng.uniform(1.5, 3.0))
            kind = rng.choice([WALL, FENCE, VEGETATION], p=[0.4, 0.4, 0.2])
            height_m = rng.uniform(1.0, 2.0)
            region = cv.draw(st.wall(lat, t_near, t_far, height_m), int(kind), _vary(rng, pal[kind], 8),
                             shade=(1.05, 0.9))
            if region is not None:
                up, depth = st.wall_coords(region, lat)
                if kind == FENCE:
                    gaps = (_frac(depth / 0.6) > 0.4) & (np.abs(up - height_m * 0.5) > 0.12) & (up < height_m - 0.15)
                    cv.recolour(region, gaps, pal[FENCE] * 0.55)
                elif kind == WALL:
                    cv.recolour(region, up > height_m - 0.15, _mix(pal[WALL], (235, 235, 235), 0.5))

    objects: list[tuple[float, Callable[[], None]]] = []   # (depth t, draw): drawn far to near

    def add(order: float, fn: Callable[..., None], *args) -> None:
        objects.append((float(order), lambda: fn(*args)))

    # --- trees on the sidewalks' outer edges (the first one is always in view)
    def tree(t, lat):
        x, y, m = st.x(lat, t), st.y(t), st.m(t)
        trunk_h, crown = rng.uniform(2.0, 3.5) * m, rng.uniform(1.5, 2.8) * m
        tw = max(2.0, 0.3 * m)
        cv.draw(_rect(x - tw / 2, y - trunk_h - crown * 0.5, x + tw / 2, y), VEGETATION,
                _mix(pal[VEGETATION], (95, 72, 50), 0.75))
        colour = _vary(rng, pal[VEGETATION], 10)
        for _ in range(rng.integers(2, 5)):
            r = crown * rng.uniform(0.6, 1.0)
            cv.draw(_ellipse(x + rng.normal(0.0, 0.4) * crown, y - trunk_h - crown * rng.uniform(0.5, 1.0),
                             r * rng.uniform(0.9, 1.2), r), VEGETATION, colour * rng.uniform(0.9, 1.1),
                    shade=(1.1, 0.8))

    for k in range(rng.integers(1, 5)):
        s = -1 if rng.random() < 0.5 else 1
        lat = walk[s] + s * rng.uniform(-0.8, 0.6)
        hi = min(0.8, st.t_inside(lat, W * 0.08))
        t = rng.uniform(min(0.2, hi * 0.8), hi) if k == 0 else rng.uniform(0.08, 0.8)
        add(t, tree, t, lat)

    # --- grass in tree pits / lawn patches on the sidewalk
    def lawn(t, lat, s):
        length = rng.uniform(1.5, 4.0)
        t2 = 1.0 / (1.0 / t + length / st.d0)
        cv.draw(_polygon([(st.x(lat, t), st.y(t)), (st.x(lat + s * 1.0, t), st.y(t)),
                          (st.x(lat + s * 1.0, t2), st.y(t2)), (st.x(lat, t2), st.y(t2))]),
                TERRAIN, _vary(rng, pal[TERRAIN], 8))

    for _ in range(rng.integers(0, 3)):
        s = -1 if rng.random() < 0.5 else 1
        lat = walk[s] - s * rng.uniform(1.0, 1.8)
        add(0.0, lawn, rng.uniform(0.15, 0.9), lat, s)   # flat on the ground: drawn before everything standing

    # --- poles with traffic signs and traffic lights (the first one always carries at least one of them)
    def pole(t, lat, s, attach):
        x, y, m = st.x(lat, t), st.y(t), st.m(t)
        pw = max(min_w, 0.22 * m)
        top = y - rng.uniform(5.0, 8.0) * m
        region = cv.draw(_rect(x - pw / 2, top, x + pw / 2, y), POLE, _vary(rng, pal[POLE], 8))
        if region is not None:                          # a round pole: lighter on one side
            cv.recolour(region, region.xs < x - pw / 6, _mix(pal[POLE], (240, 240, 245), 0.35))
        if attach in ("light", "both"):
            lw = max(min_w * 1.3, 0.4 * m)
            lh = 2.6 * lw
            lx = x - s * (rng.uniform(1.0, 2.5) * m if rng.random() < 0.4 else 0.0)   # on an arm over the road
            ly = y - rng.uniform(3.4, 4.4) * m
            if lx != x:
                cv.draw(_rect(min(lx, x), ly - lh / 2 - pw * 0.4, max(lx, x), ly - lh / 2 + pw * 0.4), POLE,
                        pal[POLE])
            cv.draw(_rect(lx - lw / 2, ly - lh / 2, lx + lw / 2, ly + lh / 2), TRAFFIC_LIGHT, pal[TRAFFIC_LIGHT],
                    shade=(1.1, 0.9))
            on = rng.integers(0, 3)
            for i, lamp in enumerate(((235, 40, 30), (240, 170, 30), (40, 220, 90))):
                colour = lamp if i == on else _mix(lamp, pal[TRAFFIC_LIGHT], 0.8)
                cv.draw(_ellipse(lx, ly - lh / 2 + lh * (i + 0.5) / 3, lw * 0.32, lw * 0.32), TRAFFIC_LIGHT, colour)
        if attach in ("sign", "both"):
            sw = max(W / 40.0, 0.75 * m)
            sy = y - rng.uniform(2.2, 3.0) * m
            form = rng.choice(["circle", "rect", "diamond"])
            colour = _vary(rng, pal[TRAFFIC_SIGN], 10)
            if form == "circle":
                region = cv.draw(_ellipse(x, sy, sw / 2, sw / 2), TRAFFIC_SIGN, colour)
                if region is not None:                  # a red rim
                    rim = (region.xs - x) ** 2 + (region.ys - sy) ** 2 > (sw * 0.36) ** 2
                    cv.recolour(region, rim, (200, 35, 40))
            elif form == "rect":
                region = cv.draw(_rect(x - sw / 2, sy - sw * 0.35, x + sw / 2, sy + sw * 0.35), TRAFFIC_SIGN, colour)
                if region is not None:                  # a symbol
                    cv.recolour(region, (np.abs(region.xs - x) < sw * 0.2) & (np.abs(region.ys - sy) < sw * 0.1),
                                (30, 30, 30))
            else:
                cv.draw(_polygon([(x, sy - sw / 2), (x + sw / 2, sy), (x, sy + sw / 2), (x - sw / 2, sy)]),
                        TRAFFIC_SIGN, colour)

    for k in range(rng.integers(1, 4)):
        s = -1 if rng.random() < 0.5 else 1
        lat = curb[s] + s * rng.uniform(0.3, 0.8)
        hi = min(0.95, st.t_inside(lat, W * 0.05))
        t = rng.uniform(min(0.3, hi * 0.8), hi) if k == 0 else rng.uniform(0.2, 1.0)
        attach = rng.choice(["sign", "light", "both"]) if k == 0 else rng.choice(
            ["none", "sign", "light", "both"], p=[0.3, 0.3, 0.25, 0.15])
        add(t, pole, t, lat, s, attach)

    # --- persons on the sidewalks (now and then one crossing the road)
    def person(t, lat):
        x, y, m = st.x(lat, t), st.y(t), st.m(t)
        hgt = rng.uniform(1.55, 1.9) * m
        cloth, trousers = _vary(rng, pal[PERSON], 20), _vary(rng, pal[PERSON] * 0.45, 10)
        skin = np.array((225, 182, 152)) * rng.uniform(0.6, 1.05)
        step = rng.uniform(-0.12, 0.12) * hgt
        leg = max(1.0, 0.055 * hgt)
        hip = y - 0.5 * hgt
        cv.draw(_capsule(x - 0.05 * hgt, hip, x - 0.05 * hgt - step, y - leg, leg), PERSON, trousers)
        cv.draw(_capsule(x + 0.05 * hgt, hip, x + 0.05 * hgt + step, y - leg, leg), PERSON, trousers)
        cv.draw(_polygon([(x - 0.14 * hgt, y - 0.82 * hgt), (x + 0.14 * hgt, y - 0.82 * hgt),
                          (x + 0.12 * hgt, y - 0.45 * hgt), (x - 0.12 * hgt, y - 0.45 * hgt)]), PERSON, cloth,
                shade=(1.1, 0.9))
        arm = max(1.0, 0.04 * hgt)
        for side in (-1, 1):
            cv.draw(_capsule(x + side * 0.15 * hgt, y - 0.78 * hgt, x + side * (0.17 * hgt + step * 0.3),
                             y - 0.5 * hgt, arm), PERSON, cloth * 0.9)
        head = cv.draw(_ellipse(x, y - 0.9 * hgt, 0.065 * hgt, 0.08 * hgt), PERSON, skin)
        if head is not None:
            cv.recolour(head, head.ys < y - 0.93 * hgt, _vary(rng, (60, 45, 35), 15))

    for k in range(rng.integers(1, 5)):
        if k > 0 and rng.random() < 0.15:
            lat = rc + rng.uniform(-hw + 0.5, hw - 0.5)
        else:
            s = -1 if rng.random() < 0.5 else 1
            lat = curb[s] + s * rng.uniform(0.4, 0.9) * abs(walk[s] - curb[s])
        hi = min(0.95, st.t_inside(lat, W * 0.05))
        t = rng.uniform(min(0.2, hi * 0.8), hi) if k == 0 else rng.uniform(0.15, 0.95)
        add(t, person, t, lat)

    # --- cars: driving in the lanes or parked along the curbs (the first one always in a lane, in view)
    def car(t, lat):
        x, y, m = st.x(lat, t), st.y(t), st.m(t)
        cw, ch = rng.uniform(1.7, 1.95) * m, rng.uniform(1.4, 1.6) * m
        body = _vary(rng, pal[CAR], 22)
        cv.darken(_ellipse(x, y, cw * 0.62, max(1.0, 0.12 * ch)), 0.55)
        tyre = (24, 24, 28)
        for side in (-1, 1):
            cv.draw(_rect(x + side * 0.31 * cw - 0.09 * cw, y - 0.3 * ch, x + side * 0.31 * cw + 0.09 * cw, y), CAR,
                    tyre)
        cv.draw(_rect(x - cw / 2, y - 0.62 * ch, x + cw / 2, y - 0.12 * ch), CAR, body, shade=(1.12, 0.82))
        cv.draw(_rect(x - cw * 0.49, y - 0.22 * ch, x + cw * 0.49, y - 0.12 * ch), CAR, body * 0.55)
        cabin = cv.draw(_polygon([(x - 0.47 * cw, y - 0.6 * ch), (x + 0.47 * cw, y - 0.6 * ch),
                                  (x + 0.36 * cw, y - ch), (x - 0.36 * cw, y - ch)]), CAR, body, shade=(1.1, 1.0))
        if cabin is not None:
            glass = (np.abs(cabin.xs - x) < 0.36 * cw - (cabin.ys - (y - ch)) * 0.1) & (cabin.ys > y - 0.95 * ch) \
                & (cabin.ys < y - 0.64 * ch)
            cv.recolour(cabin, glass, _mix((30, 36, 48), pal[SKY], 0.15))
        for side in (-1, 1):
            cv.draw(_rect(x + side * 0.42 * cw - 0.06 * cw, y - 0.58 * ch, x + side * 0.42 * cw + 0.06 * cw,
                          y - 0.48 * ch), CAR, (215, 30, 30))
        cv.draw(_rect(x - 0.12 * cw, y - 0.42 * ch, x + 0.12 * cw, y - 0.33 * ch), CAR, (225, 225, 220))

    for k in range(rng.integers(1, 6)):
        if k == 0 or rng.random() < 0.6:
            lat = rc + rng.uniform(-hw + 1.0, hw - 1.0)
        else:
            s = -1 if rng.random() < 0.5 else 1
            lat = curb[s] - s * rng.uniform(0.9, 1.2)
        t = rng.uniform(0.3, min(0.8, st.t_inside(lat, W * 0.1))) if k == 0 else rng.uniform(0.12, 1.0)
        add(t, car, t, lat)

    # --- a bus or a truck now and then
    def big_vehicle(t, lat, kind):
        x, y, m = st.x(lat, t), st.y(t), st.m(t)
        vw, vh = 2.5 * m, rng.uniform(3.0, 3.6) * m
        body = _vary(rng, pal[kind], 15)
        cv.darken(_ellipse(x, y, vw * 0.62, max(1.0, 0.08 * vh)), 0.55)
        for side in (-1, 1):
            cv.draw(_rect(x + side * 0.33 * vw - 0.1 * vw, y - 0.2 * vh, x + side * 0.33 * vw + 0.1 * vw, y), kind,
                    (24, 24, 28))
        region = cv.draw(_rect(x - vw / 2, y - vh, x + vw / 2, y - 0.1 * vh), kind, body, shade=(1.1, 0.85))
        if region is None:
            return
        if kind == BUS:
            band = (region.ys > y - 0.82 * vh) & (region.ys < y - 0.5 * vh) & (np.abs(region.xs - x) < 0.44 * vw)
            cv.recolour(region, band, _mix((28, 34, 46), pal[SKY], 0.2))
            cv.recolour(region, (region.ys < y - 0.9 * vh) & (np.abs(region.xs - x) < 0.3 * vw), (250, 160, 40))
        else:
            cv.recolour(region, region.ys > y - 0.3 * vh, (45, 45, 50))
            cv.recolour(region, (np.abs(region.xs - x) < 0.015 * vw + 0.5) & (region.ys < y - 0.3 * vh), body * 0.6)
        for side in (-1, 1):
            cv.recolour(region, (np.abs(region.xs - (x + side * 0.42 * vw)) < 0.05 * vw)
                        & (np.abs(region.ys - (y - 0.25 * vh)) < 0.04 * vh), (220, 40, 30))

    if rng.random() < 0.5:
        lat = rc + rng.uniform(-hw + 1.5, hw - 1.5)
        t = rng.uniform(0.12, 0.55)
        add(t, big_vehicle, t, lat, BUS if rng.random() < 0.5 else TRUCK)

    # --- a bicycle (side view), ridden on the road near the curb or parked on the sidewalk
    def bicycle(t, lat, ridden):
        x, y, m = st.x(lat, t), st.y(t), st.m(t)
        d = 1 if rng.random() < 0.5 else -1             # facing right or left
        r = 0.34 * m
        thick, bar = max(1.5, 0.08 * m), max(1.2, 0.05 * m)
        wb = 1.05 * m
        rear, front = (x - d * wb / 2, y - r), (x + d * wb / 2, y - r)
        crank = (x - d * 0.05 * wb, y - r * 0.9)
        seat = (x - d * 0.18 * wb, y - r - 0.55 * m)
        head = (x + d * 0.36 * wb, y - r - 0.5 * m)
        colour = _vary(rng, pal[BICYCLE], 15)
        for hub in (rear, front):
            cv.draw(_ring(hub[0], hub[1], r, r - thick), BICYCLE, colour * 0.45)
        for a, b in ((rear, crank), (rear, seat), (crank, seat), (seat, head), (crank, head), (head, front)):
            cv.draw(_capsule(a[0], a[1], b[0], b[1], bar), BICYCLE, colour)
        cv.draw(_capsule(head[0], head[1] - 0.1 * m, head[0] - d * 0.15 * m, head[1] - 0.12 * m, bar), BICYCLE,
                colour * 0.6)
        if ridden:
            rider = _vary(rng, pal[RIDER], 18)
            shoulder = (seat[0] + d * 0.25 * m, seat[1] - 0.6 * m)
            cv.draw(_capsule(seat[0], seat[1] - 0.05 * m, crank[0] + d * 0.1 * m, crank[1], 0.08 * m), RIDER,
                    rider * 0.5)
            cv.draw(_capsule(seat[0], seat[1] - 0.1 * m, shoulder[0], shoulder[1], 0.17 * m), RIDER, rider,
                    shade=(1.1, 0.9))
            cv.draw(_capsule(shoulder[0], shoulder[1], head[0], head[1] - 0.1 * m, 0.05 * m), RIDER, rider * 0.9)
            cv.draw(_ellipse(shoulder[0] + d * 0.05 * m, shoulder[1] - 0.2 * m, 0.11 * m, 0.13 * m), RIDER,
                    _vary(rng, (215, 175, 145), 15))

    if rng.random() < 0.5:
        s = -1 if rng.random() < 0.5 else 1
        ridden = rng.random() < 0.65
        lat = curb[s] - s * rng.uniform(0.6, 1.2) if ridden else curb[s] + s * rng.uniform(0.5, 1.5)
        t = rng.uniform(0.25, min(0.95, max(0.3, st.t_inside(lat, W * 0.05))))
        add(t, bicycle, t, lat, ridden)

    # --- void: static things (bins, bollards) and unlabelled clutter on the sidewalks
    def static(t, lat):
        x, y, m = st.x(lat, t), st.y(t), st.m(t)
        bw, bh = (0.6 * m, 1.0 * m) if rng.random() < 0.5 else (max(W / 120.0, 0.2 * m), 0.9 * m)
        cv.draw(_rect(x - bw / 2, y - bh, x + bw / 2, y), STATIC, _vary(rng, pal[STATIC], 15), shade=(1.1, 0.85))

    def clutter(t, lat):
        x, y, m = st.x(lat, t), st.y(t), st.m(t)
        r = rng.uniform(0.3, 0.7) * m
        cv.draw(_ellipse(x, y - r * 0.6, r * rng.uniform(1.0, 1.6), r * 0.7), UNLABELED,
                _vary(rng, pal[UNLABELED], 30))

    for _ in range(rng.integers(0, 4)):
        s = -1 if rng.random() < 0.5 else 1
        lat = curb[s] + s * rng.uniform(0.3, 1.0) * abs(walk[s] - curb[s])
        t = rng.uniform(0.15, 1.0)
        add(t, static, t, lat)
    for _ in range(rng.integers(0, 3)):
        s = -1 if rng.random() < 0.5 else 1
        lat = walk[s] + s * rng.uniform(-0.5, 0.5)
        t = rng.uniform(0.15, 0.9)
        add(t, clutter, t, lat)

    for _, draw in sorted(objects, key=lambda item: item[0]):
        draw()

    # --- void at the image borders: the ego vehicle's bonnet, an out-of-roi frame
    if rng.random() < 0.5:
        e = H * rng.uniform(0.05, 0.11)
        bend = rng.uniform(0.4, 0.7)
        cx = W * rng.uniform(0.45, 0.55)

        def bonnet(ys, xs):
            return ys > H - e * (1.0 - bend * ((xs - cx) / (W / 2)) ** 2)
        region = cv.draw(((0, H - e, W, H), bonnet), EGO_VEHICLE, pal[EGO_VEHICLE], shade=(1.3, 0.8))
        if region is not None:                          # the sky reflected near its edge
            edge = region.ys < H - e * (1.0 - bend * ((region.xs - cx) / (W / 2)) ** 2) + max(2.0, e * 0.15)
            cv.recolour(region, edge, _mix(pal[EGO_VEHICLE], pal[SKY], 0.35))
    if rng.random() < 0.35:
        b = max(1.0, W * rng.uniform(0.004, 0.012))
        for shape in (_rect(0, 0, b, H), _rect(W - b, 0, W, H), _rect(0, H - b, W, H)):
            cv.draw(shape, OUT_OF_ROI, pal[OUT_OF_ROI])

    return _render(cv, rng), cv.label


def _render(cv: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Colours x shading x exposure, plus texture per class (pixel noise, fine and coarse blotches), plus sensor noise."""
    h, w = cv.h, cv.w
    texture = _TEX_TABLE[:, 0][cv.label] * rng.standard_normal((h, w), dtype=np.float32)
    texture += _TEX_TABLE[:, 1][cv.label] * _smooth_noise(rng, h, w, max(2, w // 256))
    texture += _TEX_TABLE[:, 2][cv.label] * _smooth_noise(rng, h, w, max(8, w // 32))
    exposure = np.float32(rng.uniform(0.85, 1.12))
    image = cv.colour * (cv.shade * exposure)[..., None] + texture[..., None]
    image += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(1.5)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------- writing


def _plan(num_train: int, num_val: int) -> list[tuple[str, int, str, str]]:
    """(split, index, city, file stem) of every image; cities take turns."""
    plan = []
    for split, count in (("train", num_train), ("val", num_val)):
        cities = SPLITS[split][1]
        for index in range(count):
            city = cities[index % len(cities)]
            plan.append((split, index, city, f"{city}_{index // len(cities):06d}_{FRAME:06d}"))
    return plan


def _params(num_train: int, num_val: int, size: tuple[int, int], seed: int) -> dict:
    return {"generator": "training.demo_data", "version": GENERATOR_VERSION, "num_train": num_train,
            "num_val": num_val, "size": [size[0], size[1]], "seed": seed}


def _check(num_train, num_val, size, seed) -> tuple[int, int, tuple[int, int], int]:
    def count(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise UserError(f"{name}: expected a whole number >= 0, got {value!r}")
        return int(value)
    num_train, num_val = count("num_train", num_train), count("num_val", num_val)
    if num_train + num_val == 0:
        raise UserError("num_train + num_val: expected at least one image, got 0")
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise UserError(f"size: expected (width, height), got {size!r}") from None
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        raise UserError(f"size: expected at least {MIN_SIZE[0]}x{MIN_SIZE[1]} (width x height), got {width}x{height}")
    return num_train, num_val, (width, height), count("seed", seed)


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _generate(root, num_train, num_val, size, seed) -> tuple[Path, bool, float]:
    """Write the set unless a complete one with these parameters is there: (root, generated?, seconds)."""
    num_train, num_val, size, seed = _check(num_train, num_val, size, seed)
    root = Path(root)
    params = _params(num_train, num_val, size, seed)
    manifest = _read_manifest(root)
    if manifest is not None and manifest.get("params") == params:
        return root, False, 0.0
    start = time.perf_counter()
    data_dirs = [root / "leftImg8bit", root / "gtFine"]
    ours = manifest is not None or (root / MARKER_NAME).is_file()
    if any(d.exists() for d in data_dirs) and not ours:
        raise UserError(f"{root}: holds leftImg8bit/ or gtFine/ that the demo generator did not write; "
                        "expected an empty or new folder for the demo data (nothing was written)")
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    (root / MARKER_NAME).write_text("leftImg8bit/ and gtFine/ here were written by training/demo_data.py\n")
    for d in data_dirs:                                 # an older or partial set: start afresh
        if d.exists():
            shutil.rmtree(d)
    for d in data_dirs:
        for split in SPLITS:
            (d / split).mkdir(parents=True, exist_ok=True)
    width, height = size
    for split, index, city, stem in _plan(num_train, num_val):
        rng = np.random.default_rng([seed, SPLITS[split][0], index])
        image, label = _draw_scene(rng, width, height)
        image_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        image_dir.mkdir(exist_ok=True)
        label_dir.mkdir(exist_ok=True)
        Image.fromarray(image).save(image_dir / f"{stem}_leftImg8bit.png", compress_level=PNG_COMPRESS_LEVEL)
        Image.fromarray(label).save(label_dir / f"{stem}_gtFine_labelIds.png", compress_level=PNG_COMPRESS_LEVEL)
    seconds = time.perf_counter() - start
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps({"params": params, "layout": "Cityscapes leftImg8bit/ + gtFine/ *_gtFine_labelIds.png",
                               "cities": {split: list(SPLITS[split][1]) for split in SPLITS}}, indent=2) + "\n")
    os.replace(tmp, root / MANIFEST_NAME)
    return root, True, seconds


def make_demo_dataset(root, num_train: int = 60, num_val: int = 20, size: tuple[int, int] = (1024, 512),
                      seed: int = 0) -> Path:
    """Write `num_train` + `num_val` synthetic scenes of `size` (width, height) under `root` in the Cityscapes layout.

    Returns `root` at once, writing nothing, when `root/demo_manifest.json` records the same parameters; an older
    or unfinished set there is replaced. Refuses (UserError) a folder with leftImg8bit/ or gtFine/ of other origin.
    """
    return _generate(root, num_train, num_val, size, seed)[0]


def ensure_demo_dataset(root=DEMO_DIR, **kwargs) -> Path:
    """`make_demo_dataset` that prints one line saying where the data is and whether it was generated or reused."""
    root, generated, seconds = _generate(root, **{**_defaults(), **kwargs})
    params = _read_manifest(root)["params"]
    what = f"{params['num_train']} train + {params['num_val']} val images, {params['size'][0]}x{params['size'][1]}"
    if generated:
        print(f"demo data: generated {what} (seed {params['seed']}) in {root} in {seconds:.1f} s")
    else:
        print(f"demo data: reusing {root} ({what}, seed {params['seed']})")
    return root


def _defaults() -> dict:
    return {"num_train": 60, "num_val": 20, "size": (1024, 512), "seed": 0}


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise UserError(f"--size: expected WIDTHxHEIGHT such as 1024x512, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m training.demo_data",
                                     description="Write a small synthetic street-scene data set in the Cityscapes "
                                                 "layout (leftImg8bit/ + gtFine/ label ids).")
    parser.add_argument("--root", type=Path, default=DEMO_DIR, help=f"output folder (default {DEMO_DIR})")
    parser.add_argument("--train", type=int, default=60, help="number of training images (default 60)")
    parser.add_argument("--val", type=int, default=20, help="number of validation images (default 20)")
    parser.add_argument("--size", default="1024x512", help="image size WIDTHxHEIGHT (default 1024x512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    args = parser.parse_args(argv)
    size = _parse_size(args.size)
    root, generated, seconds = _generate(args.root, args.train, args.val, size, args.seed)
    if not generated:
        print(f"{root} already holds this demo set ({args.train} train + {args.val} val images, "
              f"{size[0]}x{size[1]}, seed {args.seed}): nothing written")
        return root
    print(f"wrote the demo set to {root} ({size[0]}x{size[1]}, seed {args.seed}) in {seconds:.1f} s:")
    for split in SPLITS:
        cities = sorted(p.name for p in (root / "leftImg8bit" / split).iterdir())
        counts = {c: len(list((root / "leftImg8bit" / split / c).glob("*_leftImg8bit.png"))) for c in cities}
        total = sum(counts.values())
        print(f"  {split}: {total} images + {total} label maps"
              + (f" ({', '.join(f'{c} {n}' for c, n in counts.items())})" if counts else ""))
    return root


if __name__ == "__main__":
    run_cli(main)
