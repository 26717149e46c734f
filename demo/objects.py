"""The standing objects of a demo scene (`demo.scene`): vegetation, street furniture, people, vehicles and
void things. Each kind has a `place_*` layer, which draws where the objects stand and queues them on the scene, and
a drawing function, called later in depth order (far to near), which draws their sizes and colours.
"""

from __future__ import annotations

import numpy as np

from demo.canvas import (
    BICYCLE,
    BUS,
    CAR,
    PERSON,
    POLE,
    RIDER,
    SKY,
    STATIC,
    TERRAIN,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    TRUCK,
    UNLABELED,
    VEGETATION,
    Scene,
    capsule,
    ellipse,
    mix,
    polygon,
    rect,
    ring,
    vary,
)


# ------------------------------------------------------------------------------------------------- vegetation
def tree_row(sc: Scene, lat_f: float, t_near: float, t_far: float) -> None:
    """A row of three tree crowns in a gap between facades."""
    for t_tree in np.linspace(t_near, t_far, 3):
        m = sc.st.m(t_tree)
        sc.cv.draw(
            ellipse(sc.st.x(lat_f, t_tree), sc.st.y(t_tree) - 3.5 * m, 2.5 * m, 3.0 * m),
            VEGETATION,
            vary(sc.rng, sc.pal[VEGETATION], 10),
            shade=(1.05, 0.85),
        )


def place_trees(sc: Scene) -> None:
    """Trees on the sidewalks' outer edges (the first one is always in view)."""
    rng = sc.rng
    for k in range(rng.integers(1, 5)):
        s = sc.side()
        lat = sc.walk[s] + s * rng.uniform(-0.8, 0.6)
        hi = min(0.8, sc.st.t_inside(lat, sc.W * 0.08))
        t = rng.uniform(min(0.2, hi * 0.8), hi) if k == 0 else rng.uniform(0.08, 0.8)
        sc.add(t, tree, t, lat)


def tree(sc: Scene, t: float, lat: float) -> None:
    cv, pal, st, rng = sc.cv, sc.pal, sc.st, sc.rng
    x, y, m = st.x(lat, t), st.y(t), st.m(t)
    trunk_h, crown = rng.uniform(2.0, 3.5) * m, rng.uniform(1.5, 2.8) * m
    tw = max(2.0, 0.3 * m)
    cv.draw(
        rect(x - tw / 2, y - trunk_h - crown * 0.5, x + tw / 2, y), VEGETATION, mix(pal[VEGETATION], (95, 72, 50), 0.75)
    )
    colour = vary(rng, pal[VEGETATION], 10)
    for _ in range(rng.integers(2, 5)):
        r = crown * rng.uniform(0.6, 1.0)
        cv.draw(
            ellipse(
                x + rng.normal(0.0, 0.4) * crown,
                y - trunk_h - crown * rng.uniform(0.5, 1.0),
                r * rng.uniform(0.9, 1.2),
                r,
            ),
            VEGETATION,
            colour * rng.uniform(0.9, 1.1),
            shade=(1.1, 0.8),
        )


def place_lawns(sc: Scene) -> None:
    """Grass in tree pits / lawn patches on the sidewalk: flat, so drawn before everything standing."""
    rng = sc.rng
    for _ in range(rng.integers(0, 3)):
        s = sc.side()
        lat = sc.walk[s] - s * rng.uniform(1.0, 1.8)
        sc.add(0.0, lawn, rng.uniform(0.15, 0.9), lat, s)


def lawn(sc: Scene, t: float, lat: float, s: int) -> None:
    st = sc.st
    length = sc.rng.uniform(1.5, 4.0)
    t2 = 1.0 / (1.0 / t + length / st.d0)
    sc.cv.draw(
        polygon(
            [
                (st.x(lat, t), st.y(t)),
                (st.x(lat + s * 1.0, t), st.y(t)),
                (st.x(lat + s * 1.0, t2), st.y(t2)),
                (st.x(lat, t2), st.y(t2)),
            ]
        ),
        TERRAIN,
        vary(sc.rng, sc.pal[TERRAIN], 8),
    )


# ------------------------------------------------------------------------------------------- street furniture
def place_poles(sc: Scene) -> None:
    """Poles with traffic signs and traffic lights (the first one always carries at least one of them)."""
    rng = sc.rng
    for k in range(rng.integers(1, 4)):
        s = sc.side()
        lat = sc.curb[s] + s * rng.uniform(0.3, 0.8)
        hi = min(0.95, sc.st.t_inside(lat, sc.W * 0.05))
        t = rng.uniform(min(0.3, hi * 0.8), hi) if k == 0 else rng.uniform(0.2, 1.0)
        attach = (
            rng.choice(["sign", "light", "both"])
            if k == 0
            else rng.choice(["none", "sign", "light", "both"], p=[0.3, 0.3, 0.25, 0.15])
        )
        sc.add(t, pole, t, lat, s, attach)


def pole(sc: Scene, t: float, lat: float, s: int, attach: str) -> None:
    cv, pal, st, rng = sc.cv, sc.pal, sc.st, sc.rng
    x, y, m = st.x(lat, t), st.y(t), st.m(t)
    pw = max(sc.min_w, 0.22 * m)
    top = y - rng.uniform(5.0, 8.0) * m
    region = cv.draw(rect(x - pw / 2, top, x + pw / 2, y), POLE, vary(rng, pal[POLE], 8))
    if region is not None:  # a round pole: lighter on one side
        cv.recolour(region, region.xs < x - pw / 6, mix(pal[POLE], (240, 240, 245), 0.35))
    if attach in ("light", "both"):
        traffic_light(sc, x, y, m, s, pw)
    if attach in ("sign", "both"):
        traffic_sign(sc, x, y, m)


def traffic_light(sc: Scene, x: float, y: float, m: float, s: int, pw: float) -> None:
    """A traffic light on its pole, or on an arm over the road; one lamp on."""
    cv, pal, rng = sc.cv, sc.pal, sc.rng
    lw = max(sc.min_w * 1.3, 0.4 * m)
    lh = 2.6 * lw
    lx = x - s * (rng.uniform(1.0, 2.5) * m if rng.random() < 0.4 else 0.0)
    ly = y - rng.uniform(3.4, 4.4) * m
    if lx != x:
        cv.draw(rect(min(lx, x), ly - lh / 2 - pw * 0.4, max(lx, x), ly - lh / 2 + pw * 0.4), POLE, pal[POLE])
    cv.draw(
        rect(lx - lw / 2, ly - lh / 2, lx + lw / 2, ly + lh / 2), TRAFFIC_LIGHT, pal[TRAFFIC_LIGHT], shade=(1.1, 0.9)
    )
    on = rng.integers(0, 3)
    for i, lamp in enumerate(((235, 40, 30), (240, 170, 30), (40, 220, 90))):
        colour = lamp if i == on else mix(lamp, pal[TRAFFIC_LIGHT], 0.8)
        cv.draw(ellipse(lx, ly - lh / 2 + lh * (i + 0.5) / 3, lw * 0.32, lw * 0.32), TRAFFIC_LIGHT, colour)


def traffic_sign(sc: Scene, x: float, y: float, m: float) -> None:
    """A round sign with a red rim, a rectangular one with a symbol, or a diamond."""
    cv, pal, rng = sc.cv, sc.pal, sc.rng
    sw = max(sc.W / 40.0, 0.75 * m)
    sy = y - rng.uniform(2.2, 3.0) * m
    form = rng.choice(["circle", "rect", "diamond"])
    colour = vary(rng, pal[TRAFFIC_SIGN], 10)
    if form == "circle":
        region = cv.draw(ellipse(x, sy, sw / 2, sw / 2), TRAFFIC_SIGN, colour)
        if region is not None:
            rim = (region.xs - x) ** 2 + (region.ys - sy) ** 2 > (sw * 0.36) ** 2
            cv.recolour(region, rim, (200, 35, 40))
    elif form == "rect":
        region = cv.draw(rect(x - sw / 2, sy - sw * 0.35, x + sw / 2, sy + sw * 0.35), TRAFFIC_SIGN, colour)
        if region is not None:
            cv.recolour(region, (np.abs(region.xs - x) < sw * 0.2) & (np.abs(region.ys - sy) < sw * 0.1), (30, 30, 30))
    else:
        cv.draw(polygon([(x, sy - sw / 2), (x + sw / 2, sy), (x, sy + sw / 2), (x - sw / 2, sy)]), TRAFFIC_SIGN, colour)


# ----------------------------------------------------------------------------------------------------- people
def place_people(sc: Scene) -> None:
    """Persons on the sidewalks (now and then one crossing the road)."""
    rng = sc.rng
    for k in range(rng.integers(1, 5)):
        if k > 0 and rng.random() < 0.15:
            lat = sc.rc + rng.uniform(-sc.hw + 0.5, sc.hw - 0.5)
        else:
            s = sc.side()
            lat = sc.curb[s] + s * rng.uniform(0.4, 0.9) * abs(sc.walk[s] - sc.curb[s])
        hi = min(0.95, sc.st.t_inside(lat, sc.W * 0.05))
        t = rng.uniform(min(0.2, hi * 0.8), hi) if k == 0 else rng.uniform(0.15, 0.95)
        sc.add(t, person, t, lat)


def person(sc: Scene, t: float, lat: float) -> None:
    cv, pal, st, rng = sc.cv, sc.pal, sc.st, sc.rng
    x, y, m = st.x(lat, t), st.y(t), st.m(t)
    hgt = rng.uniform(1.55, 1.9) * m
    cloth, trousers = vary(rng, pal[PERSON], 20), vary(rng, pal[PERSON] * 0.45, 10)
    skin = np.array((225, 182, 152)) * rng.uniform(0.6, 1.05)
    step = rng.uniform(-0.12, 0.12) * hgt
    leg = max(1.0, 0.055 * hgt)
    hip = y - 0.5 * hgt
    cv.draw(capsule(x - 0.05 * hgt, hip, x - 0.05 * hgt - step, y - leg, leg), PERSON, trousers)
    cv.draw(capsule(x + 0.05 * hgt, hip, x + 0.05 * hgt + step, y - leg, leg), PERSON, trousers)
    cv.draw(
        polygon(
            [
                (x - 0.14 * hgt, y - 0.82 * hgt),
                (x + 0.14 * hgt, y - 0.82 * hgt),
                (x + 0.12 * hgt, y - 0.45 * hgt),
                (x - 0.12 * hgt, y - 0.45 * hgt),
            ]
        ),
        PERSON,
        cloth,
        shade=(1.1, 0.9),
    )
    arm = max(1.0, 0.04 * hgt)
    for side in (-1, 1):
        cv.draw(
            capsule(x + side * 0.15 * hgt, y - 0.78 * hgt, x + side * (0.17 * hgt + step * 0.3), y - 0.5 * hgt, arm),
            PERSON,
            cloth * 0.9,
        )
    head = cv.draw(ellipse(x, y - 0.9 * hgt, 0.065 * hgt, 0.08 * hgt), PERSON, skin)
    if head is not None:
        cv.recolour(head, head.ys < y - 0.93 * hgt, vary(rng, (60, 45, 35), 15))


# --------------------------------------------------------------------------------------------------- vehicles
def place_cars(sc: Scene) -> None:
    """Cars driving in the lanes or parked along the curbs (the first one always in a lane, in view)."""
    rng = sc.rng
    for k in range(rng.integers(1, 6)):
        if k == 0 or rng.random() < 0.6:
            lat = sc.rc + rng.uniform(-sc.hw + 1.0, sc.hw - 1.0)
        else:
            s = sc.side()
            lat = sc.curb[s] - s * rng.uniform(0.9, 1.2)
        t = rng.uniform(0.3, min(0.8, sc.st.t_inside(lat, sc.W * 0.1))) if k == 0 else rng.uniform(0.12, 1.0)
        sc.add(t, car, t, lat)


def car(sc: Scene, t: float, lat: float) -> None:
    cv, pal, st, rng = sc.cv, sc.pal, sc.st, sc.rng
    x, y, m = st.x(lat, t), st.y(t), st.m(t)
    cw, ch = rng.uniform(1.7, 1.95) * m, rng.uniform(1.4, 1.6) * m
    body = vary(rng, pal[CAR], 22)
    cv.darken(ellipse(x, y, cw * 0.62, max(1.0, 0.12 * ch)), 0.55)
    tyre = (24, 24, 28)
    for side in (-1, 1):
        cv.draw(rect(x + side * 0.31 * cw - 0.09 * cw, y - 0.3 * ch, x + side * 0.31 * cw + 0.09 * cw, y), CAR, tyre)
    cv.draw(rect(x - cw / 2, y - 0.62 * ch, x + cw / 2, y - 0.12 * ch), CAR, body, shade=(1.12, 0.82))
    cv.draw(rect(x - cw * 0.49, y - 0.22 * ch, x + cw * 0.49, y - 0.12 * ch), CAR, body * 0.55)
    cabin = cv.draw(
        polygon(
            [
                (x - 0.47 * cw, y - 0.6 * ch),
                (x + 0.47 * cw, y - 0.6 * ch),
                (x + 0.36 * cw, y - ch),
                (x - 0.36 * cw, y - ch),
            ]
        ),
        CAR,
        body,
        shade=(1.1, 1.0),
    )
    if cabin is not None:
        glass = (
            (np.abs(cabin.xs - x) < 0.36 * cw - (cabin.ys - (y - ch)) * 0.1)
            & (cabin.ys > y - 0.95 * ch)
            & (cabin.ys < y - 0.64 * ch)
        )
        cv.recolour(cabin, glass, mix((30, 36, 48), pal[SKY], 0.15))
    for side in (-1, 1):
        cv.draw(
            rect(x + side * 0.42 * cw - 0.06 * cw, y - 0.58 * ch, x + side * 0.42 * cw + 0.06 * cw, y - 0.48 * ch),
            CAR,
            (215, 30, 30),
        )
    cv.draw(rect(x - 0.12 * cw, y - 0.42 * ch, x + 0.12 * cw, y - 0.33 * ch), CAR, (225, 225, 220))


def place_big_vehicle(sc: Scene) -> None:
    """A bus or a truck now and then."""
    rng = sc.rng
    if rng.random() < 0.5:
        lat = sc.rc + rng.uniform(-sc.hw + 1.5, sc.hw - 1.5)
        t = rng.uniform(0.12, 0.55)
        sc.add(t, big_vehicle, t, lat, BUS if rng.random() < 0.5 else TRUCK)


def big_vehicle(sc: Scene, t: float, lat: float, kind: int) -> None:
    cv, pal, st, rng = sc.cv, sc.pal, sc.st, sc.rng
    x, y, m = st.x(lat, t), st.y(t), st.m(t)
    vw, vh = 2.5 * m, rng.uniform(3.0, 3.6) * m
    body = vary(rng, pal[kind], 15)
    cv.darken(ellipse(x, y, vw * 0.62, max(1.0, 0.08 * vh)), 0.55)
    for side in (-1, 1):
        cv.draw(
            rect(x + side * 0.33 * vw - 0.1 * vw, y - 0.2 * vh, x + side * 0.33 * vw + 0.1 * vw, y), kind, (24, 24, 28)
        )
    region = cv.draw(rect(x - vw / 2, y - vh, x + vw / 2, y - 0.1 * vh), kind, body, shade=(1.1, 0.85))
    if region is None:
        return
    if kind == BUS:
        band = (region.ys > y - 0.82 * vh) & (region.ys < y - 0.5 * vh) & (np.abs(region.xs - x) < 0.44 * vw)
        cv.recolour(region, band, mix((28, 34, 46), pal[SKY], 0.2))
        cv.recolour(region, (region.ys < y - 0.9 * vh) & (np.abs(region.xs - x) < 0.3 * vw), (250, 160, 40))
    else:
        cv.recolour(region, region.ys > y - 0.3 * vh, (45, 45, 50))
        cv.recolour(region, (np.abs(region.xs - x) < 0.015 * vw + 0.5) & (region.ys < y - 0.3 * vh), body * 0.6)
    for side in (-1, 1):
        cv.recolour(
            region,
            (np.abs(region.xs - (x + side * 0.42 * vw)) < 0.05 * vw)
            & (np.abs(region.ys - (y - 0.25 * vh)) < 0.04 * vh),
            (220, 40, 30),
        )


def place_bicycle(sc: Scene) -> None:
    """A bicycle (side view), ridden on the road near the curb or parked on the sidewalk."""
    rng = sc.rng
    if rng.random() < 0.5:
        s = sc.side()
        ridden = rng.random() < 0.65
        lat = sc.curb[s] - s * rng.uniform(0.6, 1.2) if ridden else sc.curb[s] + s * rng.uniform(0.5, 1.5)
        t = rng.uniform(0.25, min(0.95, max(0.3, sc.st.t_inside(lat, sc.W * 0.05))))
        sc.add(t, bicycle, t, lat, ridden)


def bicycle(sc: Scene, t: float, lat: float, ridden: bool) -> None:
    cv, pal, st, rng = sc.cv, sc.pal, sc.st, sc.rng
    x, y, m = st.x(lat, t), st.y(t), st.m(t)
    d = 1 if rng.random() < 0.5 else -1  # facing right or left
    r = 0.34 * m
    thick, bar = max(1.5, 0.08 * m), max(1.2, 0.05 * m)
    wb = 1.05 * m
    rear, front = (x - d * wb / 2, y - r), (x + d * wb / 2, y - r)
    crank = (x - d * 0.05 * wb, y - r * 0.9)
    seat = (x - d * 0.18 * wb, y - r - 0.55 * m)
    head = (x + d * 0.36 * wb, y - r - 0.5 * m)
    colour = vary(rng, pal[BICYCLE], 15)
    for hub in (rear, front):
        cv.draw(ring(hub[0], hub[1], r, r - thick), BICYCLE, colour * 0.45)
    for a, b in ((rear, crank), (rear, seat), (crank, seat), (seat, head), (crank, head), (head, front)):
        cv.draw(capsule(a[0], a[1], b[0], b[1], bar), BICYCLE, colour)
    cv.draw(capsule(head[0], head[1] - 0.1 * m, head[0] - d * 0.15 * m, head[1] - 0.12 * m, bar), BICYCLE, colour * 0.6)
    if ridden:
        rider(sc, m, d, seat, crank, head)


def rider(sc: Scene, m: float, d: int, seat, crank, head) -> None:
    """The cyclist: leg, torso, arm and head, labelled rider (not person)."""
    cv, rng = sc.cv, sc.rng
    colour = vary(rng, sc.pal[RIDER], 18)
    shoulder = (seat[0] + d * 0.25 * m, seat[1] - 0.6 * m)
    cv.draw(capsule(seat[0], seat[1] - 0.05 * m, crank[0] + d * 0.1 * m, crank[1], 0.08 * m), RIDER, colour * 0.5)
    cv.draw(capsule(seat[0], seat[1] - 0.1 * m, shoulder[0], shoulder[1], 0.17 * m), RIDER, colour, shade=(1.1, 0.9))
    cv.draw(capsule(shoulder[0], shoulder[1], head[0], head[1] - 0.1 * m, 0.05 * m), RIDER, colour * 0.9)
    cv.draw(
        ellipse(shoulder[0] + d * 0.05 * m, shoulder[1] - 0.2 * m, 0.11 * m, 0.13 * m),
        RIDER,
        vary(rng, (215, 175, 145), 15),
    )


# ------------------------------------------------------------------------------------------------------- void
def place_void_objects(sc: Scene) -> None:
    """Static things (bins, bollards) and unlabelled clutter on the sidewalks."""
    rng = sc.rng
    for _ in range(rng.integers(0, 4)):
        s = sc.side()
        lat = sc.curb[s] + s * rng.uniform(0.3, 1.0) * abs(sc.walk[s] - sc.curb[s])
        t = rng.uniform(0.15, 1.0)
        sc.add(t, static_object, t, lat)
    for _ in range(rng.integers(0, 3)):
        s = sc.side()
        lat = sc.walk[s] + s * rng.uniform(-0.5, 0.5)
        t = rng.uniform(0.15, 0.9)
        sc.add(t, clutter, t, lat)


def static_object(sc: Scene, t: float, lat: float) -> None:
    rng, st = sc.rng, sc.st
    x, y, m = st.x(lat, t), st.y(t), st.m(t)
    bw, bh = (0.6 * m, 1.0 * m) if rng.random() < 0.5 else (max(sc.W / 120.0, 0.2 * m), 0.9 * m)
    sc.cv.draw(rect(x - bw / 2, y - bh, x + bw / 2, y), STATIC, vary(rng, sc.pal[STATIC], 15), shade=(1.1, 0.85))


def clutter(sc: Scene, t: float, lat: float) -> None:
    rng, st = sc.rng, sc.st
    x, y, m = st.x(lat, t), st.y(t), st.m(t)
    r = rng.uniform(0.3, 0.7) * m
    sc.cv.draw(ellipse(x, y - r * 0.6, r * rng.uniform(1.0, 1.6), r * 0.7), UNLABELED, vary(rng, sc.pal[UNLABELED], 30))
