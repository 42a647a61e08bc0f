"""Rasterise the toy world: a presenter (torso, arms, head with hair, eyes and mouth, two hands) and a product.

Shapes are ellipses, capsules and (rounded) rectangles drawn into a class map with the painter's algorithm,
then coloured from a fixed palette, so every part can be recovered from the pixels by nearest colour.
Geometry is in *units*: the frame's shorter side is 1, the origin is the frame centre, y points down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BODY",
    "CLASSES",
    "BODY_COLOURS",
    "LABEL_COLOUR",
    "SILHOUETTE_COLOUR",
    "Geometry",
    "Raster",
    "rasterize",
    "colourize",
    "hoi_colourize",
    "render_product",
    "arm_elbows",
    "grip_points",
]

# Class ids of the class map (the painting order is in `rasterize`).
CLASSES = ("background", "table", "torso", "arm", "head", "hair", "eyes", "mouth", "product", "left_hand", "right_hand")
BODY_COLOURS = {
    "background": (66, 76, 110),
    "table": (150, 105, 60),
    "torso": (60, 150, 140),
    "arm": (25, 90, 60),
    "head": (240, 195, 160),
    "hair": (95, 50, 25),
    "eyes": (10, 10, 10),
    "mouth": (160, 20, 70),
    "left_hand": (255, 120, 220),
    "right_hand": (120, 240, 250),
}
LABEL_COLOUR = (250, 250, 250)  # the product's printed pattern (stripes, bands, ribbon)
SILHOUETTE_COLOUR = (170, 170, 170)  # the HOI stream's flat body colour
BODY_CLASSES = ("torso", "arm", "head", "hair", "eyes", "mouth", "left_hand", "right_hand")


@dataclass(frozen=True)
class BodyLayout:
    """The presenter's fixed geometry in units. Hands: index 0 = presenter's left (image right, +x)."""

    # A big head for 64x64 frames (issue 16): the mouth spans 10-66 px instead of 4-26, so the codec keeps it
    head_c: tuple[float, float] = (0.0, -0.2)
    head_r: tuple[float, float] = (0.14, 0.165)
    hair_below: float = 0.07  # hair covers the head above head_c.y - hair_below
    eye_dx: float = 0.055
    eye_y: float = -0.215
    eye_r: float = 0.022
    mouth_c: tuple[float, float] = (0.0, -0.115)
    mouth_rx: float = 0.075
    mouth_ry: tuple[float, float] = (0.012, 0.055)  # closed, added at full opening
    torso_c: tuple[float, float] = (0.0, 0.2)
    torso_half: tuple[float, float] = (0.19, 0.24)
    torso_corner: float = 0.08
    table_y: float = 0.30
    shoulder: tuple[float, float] = (0.165, 0.02)  # left shoulder; the right one is mirrored
    upper_arm: float = 0.18
    forearm: float = 0.18
    arm_r: float = 0.028
    hand_r: float = 0.06  # 3.8 px at 64x64: a hand survives the codec (0.045 did not)
    rest_hand: tuple[float, float] = (0.24, 0.31)  # left hand at rest on the table; mirrored for the right
    grip_gap: float = 0.01  # hand centre distance outside the product's side when gripping


BODY = BodyLayout()


@dataclass(frozen=True)
class Geometry:
    """Per-frame world state, in units: product centre [T, 2], angle [T] (radians, clockwise on screen),
    hands [T, 2, 2] (left, right), mouth opening [T] in [0, 1]; product kind and (width, height)."""

    kind: str
    size: tuple[float, float]
    centre: np.ndarray
    angle: np.ndarray
    hands: np.ndarray
    mouth: np.ndarray
    show_product: bool = True


@dataclass(frozen=True)
class Raster:
    """Class maps [T, H, W] uint8 (ids into CLASSES) and product pattern masks [T, H, W] of the RGB frames and
    of the HOI stream (no table), and per-frame truth:
    boxes as inclusive pixel [x1, y1, x2, y2] (-1 when absent) of face [T, 4], hands [T, 2, 4], product [T, 4];
    hand–product contact [T, 2]; fraction of each hand hidden by the product [T, 2]."""

    classes: np.ndarray
    pattern: np.ndarray
    hoi_classes: np.ndarray
    hoi_pattern: np.ndarray
    face_box: np.ndarray
    hand_box: np.ndarray
    obj_box: np.ndarray
    contact: np.ndarray
    hand_hidden: np.ndarray


def grip_points(kind: str, size: tuple[float, float], centre: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Where the two hands hold the product: centre [T, 2], angle [T] -> [T, 2, 2] (left hand at +x)."""
    w, h = size
    du = w / 2 + BODY.grip_gap
    dv = 0.1 * h if kind == "bottle" else 0.0  # a bottle is held by its body, below the neck
    local = np.array([[du, dv], [-du, dv]])  # [2, 2]
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x = c * local[None, :, 0] - s * local[None, :, 1]
    y = s * local[None, :, 0] + c * local[None, :, 1]
    return centre[:, None, :] + np.stack([x, y], axis=-1)


def arm_elbows(hands: np.ndarray) -> np.ndarray:
    """Two-link inverse kinematics: hands [T, 2, 2] -> elbows [T, 2, 2].

    Of the two solutions, the one nearer a pole below and outside the shoulder is taken, so elbows point down
    and out; the pole lies where the hands never go, so the choice never flips between frames.
    """
    elbows = np.empty_like(hands)
    l1, l2 = BODY.upper_arm, BODY.forearm
    for i, side in enumerate((1.0, -1.0)):
        shoulder = np.array([side * BODY.shoulder[0], BODY.shoulder[1]])
        pole = shoulder + np.array([side * 0.3, 0.4])
        d = hands[:, i] - shoulder
        dist = np.clip(np.linalg.norm(d, axis=-1), abs(l1 - l2) + 1e-4, l1 + l2 - 1e-4)
        unit = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)
        a = np.arccos(np.clip((l1**2 + dist**2 - l2**2) / (2 * l1 * dist), -1.0, 1.0))
        cands = []
        for sign in (1.0, -1.0):
            c, s = np.cos(sign * a), np.sin(sign * a)
            cands.append(
                shoulder + l1 * np.stack([c * unit[:, 0] - s * unit[:, 1], s * unit[:, 0] + c * unit[:, 1]], -1)
            )
        nearer = np.linalg.norm(cands[0] - pole, axis=-1) <= np.linalg.norm(cands[1] - pole, axis=-1)
        elbows[:, i] = np.where(nearer[:, None], cands[0], cands[1])
    return elbows


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in units: u [1, 1, W], v [1, H, 1]."""
    s = min(height, width)
    u = ((np.arange(width) + 0.5 - width / 2) / s).astype(np.float32)
    v = ((np.arange(height) + 0.5 - height / 2) / s).astype(np.float32)
    return u[None, None, :], v[None, :, None]


def _col(x: np.ndarray) -> np.ndarray:
    """[T] -> [T, 1, 1] for broadcasting against the pixel grid."""
    return np.asarray(x, dtype=np.float32)[:, None, None]


def _ellipse(u, v, cx, cy, rx, ry) -> np.ndarray:
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0


def _capsule(u, v, a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    """Pixels within r of the segments a[T, 2] -> b[T, 2]: [T, H, W]."""
    ax, ay, dx, dy = _col(a[:, 0]), _col(a[:, 1]), _col(b[:, 0] - a[:, 0]), _col(b[:, 1] - a[:, 1])
    t = np.clip(((u - ax) * dx + (v - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return (u - ax - t * dx) ** 2 + (v - ay - t * dy) ** 2 <= r * r


def _rounded_rect(x, y, hx, hy, r) -> np.ndarray:
    """Centred rectangle of half sizes (hx, hy) with corner radius r, in local coordinates."""
    qx, qy = np.abs(x) - (hx - r), np.abs(y) - (hy - r)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
    return outside <= r


def _product_shape(kind: str, size: tuple[float, float], x, y) -> tuple[np.ndarray, np.ndarray]:
    """Silhouette and printed-pattern masks in product-local coordinates (x, y)."""
    w, h = size
    if kind == "box":
        shape = (np.abs(x) <= w / 2) & (np.abs(y) <= h / 2)
        pattern = (np.abs(x) < w / 9) | (np.abs(y) < h / 9)  # a ribbon cross
    elif kind == "bottle":
        neck_end = -h / 2 + 0.3 * h
        body = _rounded_rect(x, y - (neck_end + h / 2) / 2, w / 2, (h / 2 - neck_end) / 2, w / 5)
        neck = (np.abs(x) <= w / 4) & (y >= -h / 2) & (y < neck_end + w / 5)
        shape = body | neck
        pattern = (body & (y > -0.02 * h) & (y < 0.22 * h)) | (neck & (y < -h / 2 + 0.07 * h))  # label, cap
    elif kind == "ball":
        shape = x * x + y * y <= (w / 2) ** 2
        pattern = np.abs(y) < w / 8  # one stripe, so rotation shows
    elif kind == "can":
        shape = _rounded_rect(x, y, w / 2, h / 2, w / 6)
        pattern = np.abs(y) > h / 2 - h / 7  # rims
    else:
        raise ValueError(f"unknown product kind {kind!r}; known: box, bottle, ball, can")
    return shape, shape & pattern


def _bbox(mask: np.ndarray) -> np.ndarray:
    """Inclusive pixel boxes [T, 4] (x1, y1, x2, y2) of masks [T, H, W]; -1 rows where a mask is empty."""
    rows, cols = mask.any(axis=2), mask.any(axis=1)  # [T, H], [T, W]
    out = np.full((mask.shape[0], 4), -1, dtype=np.int64)
    has = rows.any(axis=1)
    h, w = mask.shape[1:]
    out[has, 0] = cols[has].argmax(axis=1)
    out[has, 1] = rows[has].argmax(axis=1)
    out[has, 2] = w - 1 - cols[has, ::-1].argmax(axis=1)
    out[has, 3] = h - 1 - rows[has, ::-1].argmax(axis=1)
    return out


def _body_masks(geom: Geometry, u, v, t: int) -> dict[str, np.ndarray]:
    """Full (unoccluded) masks of the presenter's parts for t frames."""
    b = BODY
    head = _ellipse(u, v, b.head_c[0], b.head_c[1], b.head_r[0], b.head_r[1]) & np.ones((t, 1, 1), bool)
    eyes = _ellipse(u, v, b.eye_dx, b.eye_y, b.eye_r, b.eye_r) | _ellipse(u, v, -b.eye_dx, b.eye_y, b.eye_r, b.eye_r)
    ry = b.mouth_ry[0] + b.mouth_ry[1] * np.clip(geom.mouth, 0.0, 1.0)
    elbows = arm_elbows(geom.hands)
    arms = np.zeros((t,) + np.broadcast_shapes(u.shape, v.shape)[1:], dtype=bool)
    for i, side in enumerate((1.0, -1.0)):
        shoulder = np.broadcast_to(np.array([side * b.shoulder[0], b.shoulder[1]]), (t, 2))
        arms |= _capsule(u, v, shoulder, elbows[:, i], b.arm_r)  # upper arm
        arms |= _capsule(u, v, elbows[:, i], geom.hands[:, i], b.arm_r)  # forearm
    return {
        "torso": _rounded_rect(u - b.torso_c[0], v - b.torso_c[1], *b.torso_half, b.torso_corner),
        "arm": arms,
        "head": head,
        "hair": head & (v < b.head_c[1] - b.hair_below),
        "eyes": head & eyes,
        "mouth": _ellipse(u, v, b.mouth_c[0], b.mouth_c[1], b.mouth_rx, _col(ry)),
        "left_hand": _ellipse(u, v, _col(geom.hands[:, 0, 0]), _col(geom.hands[:, 0, 1]), b.hand_r, b.hand_r),
        "right_hand": _ellipse(u, v, _col(geom.hands[:, 1, 0]), _col(geom.hands[:, 1, 1]), b.hand_r, b.hand_r),
    }


def _product_masks(geom: Geometry, u, v) -> tuple[np.ndarray, np.ndarray]:
    du, dv = u - _col(geom.centre[:, 0]), v - _col(geom.centre[:, 1])
    c, s = _col(np.cos(geom.angle)), _col(np.sin(geom.angle))
    shape, pattern = _product_shape(geom.kind, geom.size, c * du + s * dv, -s * du + c * dv)
    if not geom.show_product:
        shape, pattern = np.zeros_like(shape), np.zeros_like(pattern)
    return shape, pattern


def _paint(parts: dict[str, np.ndarray], order: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    classes = np.zeros(shape, dtype=np.uint8)
    for name in order:
        classes[np.broadcast_to(parts[name], shape)] = CLASSES.index(name)
    return classes


def rasterize(geom: Geometry, height: int, width: int, *, product_over_hands: bool = False) -> Raster:
    """Draw T frames of `geom` at height x width pixels; hands are in front of the product unless asked otherwise.

    The HOI class map is painted from the same shapes without the table (the body is whole, as a rendered mesh).
    """
    t = len(geom.mouth)
    u, v = _grid(height, width)
    parts = _body_masks(geom, u, v, t)
    parts["product"], pattern = _product_masks(geom, u, v)
    parts["table"] = (v >= BODY.table_y) & np.ones((1, 1, width), bool)
    front = ("left_hand", "right_hand", "product") if product_over_hands else ("product", "left_hand", "right_hand")
    body = ("arm", "head", "hair", "eyes", "mouth")
    classes = _paint(parts, ("torso", "table") + body + front, (t, height, width))
    hoi_classes = _paint(parts, ("torso",) + body + front, (t, height, width))
    product = CLASSES.index("product")
    hands = np.stack([parts["left_hand"], parts["right_hand"]], axis=1)  # [T, 2, H, W]
    hidden = (hands & (classes == product)[:, None]).sum((2, 3)) / np.maximum(hands.sum((2, 3)), 1)
    return Raster(
        classes=classes,
        pattern=pattern & (classes == product),
        hoi_classes=hoi_classes,
        hoi_pattern=pattern & (hoi_classes == product),
        face_box=_bbox(parts["head"]),
        hand_box=np.stack([_bbox(parts["left_hand"]), _bbox(parts["right_hand"])], axis=1),
        obj_box=_bbox(parts["product"]),
        contact=(hands & parts["product"][:, None]).any((2, 3)),
        hand_hidden=hidden,
    )


def colourize(raster: Raster, product_colour: tuple[int, int, int]) -> np.ndarray:
    """Class map -> RGB frames [T, H, W, 3] uint8 in the world palette."""
    lut = np.array([BODY_COLOURS.get(name, product_colour) for name in CLASSES], dtype=np.uint8)
    rgb = lut[raster.classes]
    rgb[raster.pattern] = LABEL_COLOUR
    return rgb


def hoi_colourize(raster: Raster, product_colour: tuple[int, int, int]) -> np.ndarray:
    """HOI class map -> HOI frames [T, H, W, 3]: body silhouette in one colour, product in its RGB, black."""
    lut = np.zeros((len(CLASSES), 3), dtype=np.uint8)
    for name in BODY_CLASSES:
        lut[CLASSES.index(name)] = SILHOUETTE_COLOUR
    lut[CLASSES.index("product")] = product_colour
    rgb = lut[raster.hoi_classes]
    rgb[raster.hoi_pattern] = LABEL_COLOUR
    return rgb


def render_product(
    kind: str, size: tuple[float, float], colour: tuple[int, int, int], height: int, width: int, fill: float = 0.7
) -> np.ndarray:
    """The product alone, upright and centred on black, its larger side `fill` of the short side: [H, W, 3]."""
    u, v = _grid(height, width)
    k = fill / max(size)
    shape, pattern = _product_shape(kind, (size[0] * k, size[1] * k), u + 0 * v, v + 0 * u)
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[shape[0]] = colour
    rgb[pattern[0]] = LABEL_COLOUR
    return rgb
