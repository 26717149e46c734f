"""The demo data set's scene painter: one street scene, layer by layer, far to near (painter's algorithm).

`draw_scene(rng, width, height)` paints the layers in a fixed order, each a short function of the scene: sky,
the street's cross-section, ground and road, the skyline, facades, low walls in front of them, then the standing
objects (vegetation, street furniture, people, vehicles, void things) sorted by depth, and the void regions at the
image borders. Every random draw comes from `rng` in this fixed order, so a scene is a pure function of the seed.
"""

from __future__ import annotations

import numpy as np

from demo.canvas import (
    BUILDING,
    EGO_VEHICLE,
    FENCE,
    GROUND,
    OUT_OF_ROI,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    TEXTURE_TABLE,
    VEGETATION,
    WALL,
    Canvas,
    Scene,
    ellipse,
    frac,
    mix,
    rect,
    smooth_noise,
    vary,
)
from demo.objects import (
    place_bicycle,
    place_big_vehicle,
    place_cars,
    place_lawns,
    place_people,
    place_poles,
    place_trees,
    place_void_objects,
    tree_row,
)


# ---------------------------------------------------------------------------------------------- sky and ground
def sky(sc: Scene) -> None:
    """The sky, with a few clouds."""
    cv, pal, rng, W = sc.cv, sc.pal, sc.rng, sc.W
    cv.draw(rect(0, 0, W, sc.st.yh + 1), SKY, pal[SKY], shade=(0.82, 1.12))
    for _ in range(rng.integers(0, 4)):
        rx = W * rng.uniform(0.05, 0.15)
        cv.draw(
            ellipse(rng.uniform(0, W), rng.uniform(0, sc.st.yh * 0.7), rx, rx * rng.uniform(0.15, 0.35)),
            SKY,
            mix(pal[SKY], (236, 238, 244), rng.uniform(0.5, 0.8)),
        )


def cross_section(sc: Scene) -> None:
    """The street across (lateral metres): road, curbs, sidewalks, a strip of terrain or ground, facades."""
    rng = sc.rng
    sc.rc, sc.hw = rng.uniform(-1.2, 1.2), rng.uniform(3.0, 4.6)
    sc.curb = {s: sc.rc + s * sc.hw for s in (-1, 1)}
    sc.walk = {s: sc.curb[s] + s * rng.uniform(2.0, 4.0) for s in (-1, 1)}
    grass_side = -1 if rng.random() < 0.5 else 1  # one side always has a strip of terrain
    sc.strip_label, sc.front = {}, {}
    for s in (-1, 1):
        kind = "terrain" if s == grass_side else rng.choice(["terrain", "ground", "none"], p=[0.5, 0.2, 0.3])
        sc.strip_label[s] = GROUND if kind == "ground" else TERRAIN
        sc.front[s] = sc.walk[s] + s * (rng.uniform(1.0, 3.0) if kind != "none" else 0.0)


def ground_and_sidewalks(sc: Scene) -> None:
    """The strips beside the street, then the sidewalks with tile joints and curb stones."""
    cv, pal, st, rng = sc.cv, sc.pal, sc.st, sc.rng
    cv.draw(rect(0, st.yh, st.vx, sc.H), sc.strip_label[-1], pal[sc.strip_label[-1]], shade=(0.95, 1.05))
    cv.draw(rect(st.vx, st.yh, sc.W, sc.H), sc.strip_label[1], pal[sc.strip_label[1]], shade=(0.95, 1.05))
    tile = rng.uniform(1.0, 2.0)
    for s in (-1, 1):
        region = cv.draw(st.ground_strip(sc.curb[s], sc.walk[s]), SIDEWALK, pal[SIDEWALK], shade=(0.95, 1.05))
        if region is not None:
            _, lat, depth = st.ground_coords(region)
            joints = (frac(depth / tile) < 0.08) | (frac(lat / tile) < 0.08)
            cv.recolour(region, joints, pal[SIDEWALK] * 0.8)
        cv.draw(st.ground_strip(sc.curb[s], sc.curb[s] + s * 0.3), SIDEWALK, mix(pal[SIDEWALK], (215, 215, 210), 0.5))


def road(sc: Scene) -> None:
    """The road with its markings: a dashed centre line, sometimes lane edges and a zebra crossing."""
    cv, pal, st, rng, rc, hw = sc.cv, sc.pal, sc.st, sc.rng, sc.rc, sc.hw
    region = cv.draw(st.ground_strip(sc.curb[-1], sc.curb[1]), ROAD, pal[ROAD], shade=(1.08, 0.95))
    if region is None:
        return
    _, lat, depth = st.ground_coords(region)
    paint = mix(pal[ROAD], (235, 235, 230), 0.85)
    dash = rng.uniform(3.0, 6.0)
    marks = (np.abs(lat - rc) < 0.08) & (frac(depth / (2 * dash)) < 0.5)
    if rng.random() < 0.6:
        marks |= np.abs(np.abs(lat - rc) - (hw - 0.4)) < 0.07
    if rng.random() < 0.3:  # a zebra crossing
        d_cross = rng.uniform(6.0, 20.0)
        marks |= (depth > d_cross) & (depth < d_cross + 4.0) & (frac(lat / 1.0) < 0.5)
    cv.recolour(region, marks, paint)


# -------------------------------------------------------------------------------------------------- buildings
def skyline(sc: Scene) -> None:
    """Far buildings (and tree tops) around the vanishing point."""
    cv, pal, st, rng, W = sc.cv, sc.pal, sc.st, sc.rng, sc.W
    x = st.vx - W * rng.uniform(0.15, 0.25)
    x_end = st.vx + W * rng.uniform(0.15, 0.25)
    while x < x_end:
        bw = W * rng.uniform(0.02, 0.06)
        top = st.yh - st.g * rng.uniform(0.03, 0.22)
        if rng.random() < 0.8:
            cv.draw(rect(x, top, x + bw, st.yh + 2), BUILDING, mix(vary(rng, pal[BUILDING], 14), pal[SKY], 0.3))
        else:
            cv.draw(
                ellipse(x + bw / 2, st.yh - (st.yh - top) / 2, bw * 0.7, (st.yh - top) / 2 + 2),
                VEGETATION,
                mix(pal[VEGETATION], pal[SKY], 0.2),
            )
        x += bw


def facades(sc: Scene) -> None:
    """Facades along both sides in depth slices, now and then a gap or a row of trees."""
    rng = sc.rng
    for s in (-1, 1):
        lat_f = sc.front[s]
        t_edge = sc.st.t_inside(lat_f, 0.0)
        z, z_far = rng.uniform(0.5, 0.9) / t_edge, 30.0  # z = 1 / t
        lit = 1.05 if s == sc.sun else 0.8
        while z < z_far:
            z_next = z * rng.uniform(1.15, 1.5)
            t_near, t_far = 1.0 / z, 1.0 / z_next
            kind = rng.choice(["building", "gap", "trees"], p=[0.8, 0.08, 0.12])
            if kind == "building":
                facade(sc, lat_f, t_near, t_far, lit)
            elif kind == "trees":
                tree_row(sc, lat_f, t_near, t_far)
            z = z_next


def facade(sc: Scene, lat_f: float, t_near: float, t_far: float, lit: float) -> None:
    """One building's facade, with windows in perspective and sometimes shop windows."""
    cv, pal, st, rng = sc.cv, sc.pal, sc.st, sc.rng
    height_m = rng.uniform(7.0, 22.0)
    colour = vary(rng, pal[BUILDING], 16)
    region = cv.draw(st.wall(lat_f, t_near, t_far, height_m), BUILDING, colour, shade=(lit, lit * 0.92))
    if region is None or abs(st.x(lat_f, t_near) - st.x(lat_f, t_far)) <= 6:
        return
    up, depth = st.wall_coords(region, lat_f)
    spacing, floor = rng.uniform(2.5, 4.0), rng.uniform(2.8, 3.6)
    windows = (
        (frac(depth / spacing) > 0.25)
        & (frac(depth / spacing) < 0.7)
        & (frac(up / floor) > 0.35)
        & (frac(up / floor) < 0.8)
        & (up > floor)
        & (up < height_m - 1.0)
    )
    glass = vary(rng, (55, 65, 85), 8)
    cv.recolour(region, windows, glass)
    if rng.random() < 0.5:  # shop windows on the ground floor
        cv.recolour(region, (up > 0.4) & (up < 2.6) & (frac(depth / 5.0) < 0.7), glass * 1.2)


def front_walls(sc: Scene) -> None:
    """Walls, fences and hedges just in front of the facades."""
    cv, pal, st, rng = sc.cv, sc.pal, sc.st, sc.rng
    for s in (-1, 1):
        if rng.random() >= 0.6:
            continue
        lat = sc.front[s] - s * 0.2
        z0 = max(1.0 / st.t_inside(lat, 0.0), 1.0) * rng.uniform(1.0, 2.0)
        t_near, t_far = 1.0 / z0, 1.0 / (z0 * rng.uniform(1.5, 3.0))
        kind = rng.choice([WALL, FENCE, VEGETATION], p=[0.4, 0.4, 0.2])
        height_m = rng.uniform(1.0, 2.0)
        region = cv.draw(st.wall(lat, t_near, t_far, height_m), int(kind), vary(rng, pal[kind], 8), shade=(1.05, 0.9))
        if region is None:
            continue
        up, depth = st.wall_coords(region, lat)
        if kind == FENCE:
            gaps = (frac(depth / 0.6) > 0.4) & (np.abs(up - height_m * 0.5) > 0.12) & (up < height_m - 0.15)
            cv.recolour(region, gaps, pal[FENCE] * 0.55)
        elif kind == WALL:
            cv.recolour(region, up > height_m - 0.15, mix(pal[WALL], (235, 235, 235), 0.5))


def border_void(sc: Scene) -> None:
    """Void at the image borders: the ego vehicle's bonnet, an out-of-roi frame."""
    cv, pal, rng, W, H = sc.cv, sc.pal, sc.rng, sc.W, sc.H
    if rng.random() < 0.5:
        e = H * rng.uniform(0.05, 0.11)
        bend = rng.uniform(0.4, 0.7)
        cx = W * rng.uniform(0.45, 0.55)

        def bonnet(ys, xs):
            return ys > H - e * (1.0 - bend * ((xs - cx) / (W / 2)) ** 2)

        region = cv.draw(((0, H - e, W, H), bonnet), EGO_VEHICLE, pal[EGO_VEHICLE], shade=(1.3, 0.8))
        if region is not None:  # the sky reflected near its edge
            edge = region.ys < H - e * (1.0 - bend * ((region.xs - cx) / (W / 2)) ** 2) + max(2.0, e * 0.15)
            cv.recolour(region, edge, mix(pal[EGO_VEHICLE], pal[SKY], 0.35))
    if rng.random() < 0.35:
        b = max(1.0, W * rng.uniform(0.004, 0.012))
        for shape in (rect(0, 0, b, H), rect(W - b, 0, W, H), rect(0, H - b, W, H)):
            cv.draw(shape, OUT_OF_ROI, pal[OUT_OF_ROI])


# ------------------------------------------------------------------------------------------------------ scene
# The layers in painting order; the place_* ones queue standing objects, drawn afterwards by depth.
LAYERS = (
    sky,
    cross_section,
    ground_and_sidewalks,
    road,
    skyline,
    facades,
    front_walls,
    place_trees,
    place_lawns,
    place_poles,
    place_people,
    place_cars,
    place_big_vehicle,
    place_bicycle,
    place_void_objects,
)


def draw_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint one street scene: returns (RGB image uint8 H x W x 3, label ids uint8 H x W)."""
    sc = Scene(rng, width, height)
    for layer in LAYERS:
        layer(sc)
    sc.draw_objects()
    border_void(sc)
    return render(sc.cv, rng), sc.cv.label


def render(cv: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Colours x shading x exposure, plus texture per class (pixel noise, fine and coarse blotches) and sensor noise."""
    h, w = cv.h, cv.w
    texture = TEXTURE_TABLE[:, 0][cv.label] * rng.standard_normal((h, w), dtype=np.float32)
    texture += TEXTURE_TABLE[:, 1][cv.label] * smooth_noise(rng, h, w, max(2, w // 256))
    texture += TEXTURE_TABLE[:, 2][cv.label] * smooth_noise(rng, h, w, max(8, w // 32))
    exposure = np.float32(rng.uniform(0.85, 1.12))
    image = cv.colour * (cv.shade * exposure)[..., None] + texture[..., None]
    image += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(1.5)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
