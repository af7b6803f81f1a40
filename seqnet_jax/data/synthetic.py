"""A built-in, deterministic, procedural person-search dataset ("synthetic").

It stands in for CUHK-SYSU in the default CPU run: scene images with 2-6 simple drawn people
(head, hair, torso with a shirt pattern, arms, legs, shoes, optional hat and bag) over textured
camera-specific backgrounds with clutter (poles, boxes, cars, trees, bins, signs), some people
partially occluded by foreground objects or by each other, and per-camera lighting, blur, noise
and person-scale changes.

Identity is carried by appearance: every identity has a fixed set of attributes (shirt colour,
shirt pattern and its second colour, trouser colour and style, sleeves, skin, hair colour and
style, hat, bag, shoes and body proportions). Any two labeled identities differ in at least two
"major" attributes (shirt colour / pattern / pattern colour / trouser colour) and three attributes
in all; unlabeled people (``pid = UNLABELED_PID``) are drawn from per-split pools of random
appearances that obey the same distance to every labeled identity.

Everything is generated on demand from ``(seed, split, image index)``: building the dataset
computes the layouts (boxes, pids, cameras) and renders the per-identity sprites once;
``dataset.load_image(split, name)`` renders the pixels (about 1-3 ms for 192x320). No files are
written.

Protocols mimic CUHK-SYSU (§5.1 of the reference notes): queries are boxes in gallery images
(one or two per test identity, the least occluded appearances); protocol ``TestG{N}`` gives each
query a gallery made of all other images containing its person plus distractor images up to
``N`` images, with the query image itself excluded. Smaller galleries are nested in larger ones.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from seqnet_jax.data.cuhk_sysu import protocol_name
from seqnet_jax.data.types import (
    UNLABELED_PID,
    ImageAnnotation,
    PersonSearchDataset,
    Query,
    SearchProtocol,
)

__all__ = [
    "CBGM_K1",
    "CBGM_K2",
    "Appearance",
    "SyntheticRenderer",
    "make_synthetic_dataset",
    "protocol_name",
    "save_preview",
]

# Protocol names: ``protocol_name(N)`` = ``"TestG{N}"`` as CUHK-SYSU's, one per gallery size
# (``gallery_size`` first, then ``extra_gallery_sizes``). CBGM parameters: CUHK-SYSU's, whose
# protocols the data mimics (the measured synthetic results use them).
CBGM_K1 = 10
CBGM_K2 = 3

# --------------------------------------------------------------------------------------------
# Palettes
# --------------------------------------------------------------------------------------------

_SHIRT_COLOURS = (
    (205, 30, 35),  # red
    (245, 135, 25),  # orange
    (240, 215, 40),  # yellow
    (70, 180, 60),  # green
    (15, 95, 45),  # dark green
    (25, 175, 185),  # teal
    (95, 165, 240),  # sky blue
    (25, 45, 135),  # navy
    (125, 50, 170),  # purple
    (245, 125, 185),  # pink
    (238, 238, 238),  # white
    (30, 30, 32),  # black
    (135, 135, 135),  # grey
    (125, 75, 35),  # brown
)
_SECONDARY_COLOURS = (
    (245, 245, 245),  # white
    (20, 20, 20),  # black
    (220, 30, 30),  # red
    (250, 225, 30),  # yellow
    (30, 90, 220),  # blue
    (40, 170, 70),  # green
)
_TROUSER_COLOURS = (
    (28, 28, 34),  # black
    (35, 42, 95),  # navy
    (70, 105, 165),  # denim
    (195, 175, 125),  # khaki
    (125, 125, 130),  # grey
    (105, 65, 35),  # brown
    (228, 228, 222),  # white
    (90, 100, 45),  # olive
    (160, 30, 40),  # dark red
)
_SKIN_TONES = ((250, 215, 185), (225, 175, 135), (175, 120, 80), (110, 70, 45))
_HAIR_COLOURS = ((20, 18, 18), (85, 50, 25), (225, 190, 100), (170, 170, 170), (175, 75, 30))
_ACCESSORY_COLOURS = (
    (200, 30, 30),
    (30, 60, 200),
    (20, 20, 20),
    (240, 240, 240),
    (245, 200, 30),
    (40, 150, 60),
    (140, 90, 50),
    (150, 60, 170),
)
_SHOE_COLOURS = ((25, 25, 25), (235, 235, 235), (110, 60, 30))

_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "dots", "band")
_TROUSER_STYLES = ("long", "shorts", "skirt")
_HATS = ("none", "cap", "beanie")
_BAGS = ("none", "backpack", "shoulder", "handbag")
_NUM_POSES = 4
_CANON_H = 128  # sprites are drawn with a body height of 128 px, then resized
_SPLIT_CODES = {"train": 1, "test": 2}
_BACKGROUND_STYLES = ("street", "indoor", "park", "plaza", "night", "corridor")


@dataclasses.dataclass(frozen=True)
class Appearance:
    """The fixed visual attributes of one (labeled or unlabeled) person.

    Categorical fields are indices into the module palettes / option tuples; the last three are
    continuous body proportions.
    """

    shirt: int
    pattern: int
    secondary: int
    trousers: int
    trouser_style: int
    long_sleeves: bool
    skin: int
    hair: int
    long_hair: bool
    hat: int
    hat_colour: int
    bag: int
    bag_colour: int
    shoes: int
    head_scale: float
    body_width: float
    leg_ratio: float

    def major(self) -> tuple:
        """The attributes that dominate the look (large, coloured areas)."""
        secondary = self.secondary if self.pattern != 0 else -1
        return (self.shirt, self.pattern, secondary, self.trousers)

    def minor(self) -> tuple:
        """Smaller cues (still visible, but fewer pixels)."""
        return (self.trouser_style, self.long_sleeves, self.hair, self.hat, self.bag)


def _colour_dist(a: Sequence[int], b: Sequence[int]) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))


def _sample_appearance(rng: np.random.Generator) -> Appearance:
    shirt = int(rng.integers(len(_SHIRT_COLOURS)))
    pattern = int(rng.choice(len(_PATTERNS), p=[0.3, 0.15, 0.14, 0.14, 0.13, 0.14]))
    ok = [
        i for i, c in enumerate(_SECONDARY_COLOURS) if _colour_dist(c, _SHIRT_COLOURS[shirt]) > 140
    ]
    secondary = int(rng.choice(ok))
    hat = int(rng.choice(3, p=[0.7, 0.2, 0.1]))
    bag = int(rng.choice(4, p=[0.5, 0.2, 0.18, 0.12]))
    return Appearance(
        shirt=shirt,
        pattern=pattern,
        secondary=secondary,
        trousers=int(rng.integers(len(_TROUSER_COLOURS))),
        trouser_style=int(rng.choice(3, p=[0.65, 0.2, 0.15])),
        long_sleeves=bool(rng.random() < 0.5),
        skin=int(rng.integers(len(_SKIN_TONES))),
        hair=int(rng.integers(len(_HAIR_COLOURS))),
        long_hair=bool(rng.random() < 0.35),
        hat=hat,
        hat_colour=int(rng.integers(len(_ACCESSORY_COLOURS))),
        bag=bag,
        bag_colour=int(rng.integers(len(_ACCESSORY_COLOURS))),
        shoes=int(rng.integers(len(_SHOE_COLOURS))),
        head_scale=float(rng.uniform(0.88, 1.12)),
        body_width=float(rng.uniform(0.85, 1.2)),
        leg_ratio=float(rng.uniform(0.43, 0.5)),
    )


def _distinct(a: Appearance, b: Appearance) -> bool:
    """Whether two appearances are far enough apart to count as different people."""
    major = sum(x != y for x, y in zip(a.major(), b.major(), strict=True))
    minor = sum(x != y for x, y in zip(a.minor(), b.minor(), strict=True))
    return major >= 2 and major + minor >= 3


def _sample_distinct(
    rng: np.random.Generator, n: int, against: list, mutually: bool, what: str
) -> list:
    out = []
    for _ in range(n):
        for _attempt in range(5000):
            cand = _sample_appearance(rng)
            if all(_distinct(cand, o) for o in against) and (
                not mutually or all(_distinct(cand, o) for o in out)
            ):
                out.append(cand)
                break
        else:
            raise ValueError(f"could not sample {n} distinct {what} appearances; use fewer")
    return out


# --------------------------------------------------------------------------------------------
# Person sprites
# --------------------------------------------------------------------------------------------


def _pattern_array(app: Appearance, h: int, w: int, t: float) -> np.ndarray:
    """Shirt pixels (h, w, 3) for a torso box of that size; ``t`` is the body height."""
    base = np.asarray(_SHIRT_COLOURS[app.shirt], np.uint8)
    sec = np.asarray(_SECONDARY_COLOURS[app.secondary], np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    name = _PATTERNS[app.pattern]
    period = max(4, int(round(0.07 * t)))
    if name == "plain":
        sel = np.zeros((h, w), bool)
    elif name == "hstripes":
        sel = (yy // (period // 2)) % 2 == 1
    elif name == "vstripes":
        sel = ((xx + (w % period) // 2) // (period // 2)) % 2 == 1
    elif name == "checks":
        sel = ((yy // (period // 2)) + (xx // (period // 2))) % 2 == 1
    elif name == "dots":
        step = max(6, int(round(0.085 * t)))
        r = 0.026 * t
        ry = (yy % step) - step / 2
        shift = np.where((yy // step) % 2 == 1, step // 2, 0)
        rx = ((xx + shift) % step) - step / 2
        sel = ry * ry + rx * rx <= r * r
    elif name == "band":
        sel = (yy >= 0.32 * h) & (yy < 0.6 * h)
    else:  # pragma: no cover
        raise ValueError(name)
    out = np.empty((h, w, 3), np.uint8)
    out[...] = base
    out[sel] = sec
    return out


def _render_sprite(app: Appearance, pose: int) -> Image.Image:
    """Draws one person (front view) as an RGBA image cropped tightly to its pixels."""
    t = float(_CANON_H)
    margin = 16
    cw, ch = int(1.2 * t), int(t + margin + 4)
    cx = cw / 2
    img = Image.new("RGBA", (cw, ch), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)

    skin = _SKIN_TONES[app.skin] + (255,)
    hair = _HAIR_COLOURS[app.hair] + (255,)
    shirt = _SHIRT_COLOURS[app.shirt] + (255,)
    trousers = _TROUSER_COLOURS[app.trousers] + (255,)
    shoes = _SHOE_COLOURS[app.shoes] + (255,)
    hat_c = _ACCESSORY_COLOURS[app.hat_colour] + (255,)
    bag_c = _ACCESSORY_COLOURS[app.bag_colour] + (255,)
    bag_dark = tuple(int(v * 0.7) for v in _ACCESSORY_COLOURS[app.bag_colour]) + (255,)

    top = float(margin)  # head top
    bottom = top + t  # shoe soles
    hh = 0.135 * t * app.head_scale
    hw = hh * 0.8
    sy = top + hh + 0.02 * t  # shoulder line
    hip = bottom - app.leg_ratio * t
    ankle = bottom - 0.035 * t
    knee = 0.5 * (hip + ankle)
    sw = 0.125 * t * app.body_width  # half shoulder width
    ww = 0.105 * t * app.body_width  # half waist width
    arm_w = max(3, int(round(0.055 * t * app.body_width**0.5)))
    leg_w = 0.075 * t * app.body_width**0.5

    # Pose: foot x offsets, hand positions (relative to cx, absolute y).
    if pose == 0:  # standing
        feet = (-0.055 * t, 0.055 * t)
        hands = ((-(sw + 0.04 * t), hip + 0.03 * t), (sw + 0.04 * t, hip + 0.03 * t))
    elif pose == 1:  # walking
        feet = (-0.10 * t, 0.075 * t)
        hands = ((-(sw + 0.01 * t), hip - 0.03 * t), (sw + 0.075 * t, hip + 0.0 * t))
    elif pose == 2:  # holding a phone
        feet = (-0.04 * t, 0.07 * t)
        hands = ((-(sw + 0.035 * t), hip + 0.03 * t), (0.25 * sw, sy + 0.13 * t))
    else:  # waving
        feet = (-0.075 * t, 0.06 * t)
        hands = ((-(sw + 0.035 * t), hip + 0.03 * t), (sw + 0.09 * t, top + 0.04 * t))

    def box(x0, y0, x1, y1):
        return [x0, y0, x1, y1]

    # --- behind the body: long hair, backpack.
    if app.long_hair:
        draw.rounded_rectangle(
            box(cx - hw / 2 - 2, top + hh * 0.35, cx + hw / 2 + 2, sy + 0.1 * t),
            radius=4,
            fill=hair,
        )
    if _BAGS[app.bag] == "backpack":
        draw.rounded_rectangle(
            box(cx - sw - 0.035 * t, sy + 0.035 * t, cx + sw + 0.035 * t, hip - 0.02 * t),
            radius=5,
            fill=bag_dark,
        )

    # --- legs.
    legs = []
    for side, fx in zip((-1, 1), feet, strict=True):
        outer = cx + side * ww
        inner = cx
        pts = [
            (outer, hip),
            (inner, hip),
            (cx + fx - side * leg_w / 2, ankle),
            (cx + fx + side * leg_w / 2, ankle),
        ]
        legs.append(pts)
    style = _TROUSER_STYLES[app.trouser_style]
    for pts in legs:
        draw.polygon(pts, fill=trousers if style == "long" else skin)
        if style == "shorts":
            f = 0.55
            knee_pts = [
                pts[0],
                pts[1],
                (pts[1][0] + f * (pts[2][0] - pts[1][0]), pts[1][1] + f * (pts[2][1] - pts[1][1])),
                (pts[0][0] + f * (pts[3][0] - pts[0][0]), pts[0][1] + f * (pts[3][1] - pts[0][1])),
            ]
            draw.polygon(knee_pts, fill=trousers)
    for fx in feet:
        x = cx + fx
        draw.ellipse(box(x - leg_w * 0.75, ankle - 0.015 * t, x + leg_w * 0.75, bottom), fill=shoes)
    if style == "skirt":
        draw.polygon(
            [
                (cx - ww, hip - 0.03 * t),
                (cx + ww, hip - 0.03 * t),
                (cx + ww + 0.05 * t, knee + 0.02 * t),
                (cx - ww - 0.05 * t, knee + 0.02 * t),
            ],
            fill=trousers,
        )
    else:
        draw.rectangle(box(cx - ww, hip - 0.03 * t, cx + ww, hip + 0.03 * t), fill=trousers)

    # --- neck and torso (patterned).
    draw.rectangle(box(cx - 0.028 * t, sy - 0.03 * t, cx + 0.028 * t, sy + 0.01 * t), fill=skin)
    torso = [
        (cx - sw, sy + 0.025 * t),
        (cx - sw + 0.025 * t, sy),
        (cx + sw - 0.025 * t, sy),
        (cx + sw, sy + 0.025 * t),
        (cx + ww, hip + 0.005 * t),
        (cx - ww, hip + 0.005 * t),
    ]
    x0, y0 = int(math.floor(cx - sw)), int(math.floor(sy))
    x1, y1 = int(math.ceil(cx + sw)) + 1, int(math.ceil(hip + 0.005 * t)) + 1
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in torso], fill=255)
    pattern = Image.fromarray(_pattern_array(app, y1 - y0, x1 - x0, t), "RGB").convert("RGBA")
    img.paste(pattern, (x0, y0), mask)
    draw = ImageDraw.Draw(img)
    if _BAGS[app.bag] == "backpack":
        for side in (-1, 1):
            draw.line(
                [(cx + side * sw * 0.55, sy), (cx + side * sw * 0.62, hip - 0.09 * t)],
                fill=bag_c,
                width=max(2, int(0.025 * t)),
            )

    # --- arms.
    for side, (hx, hy) in zip((-1, 1), hands, strict=True):
        shoulder = (cx + side * (sw - arm_w * 0.4), sy + arm_w * 0.5)
        hand = (cx + hx, hy)
        elbow = (
            0.5 * (shoulder[0] + hand[0]) + side * 0.02 * t,
            0.5 * (shoulder[1] + hand[1]) + (0.02 * t if hy < sy else 0.0),
        )
        if app.long_sleeves:
            draw.line([shoulder, elbow, hand], fill=shirt, width=arm_w, joint="curve")
        else:
            draw.line([elbow, hand], fill=skin, width=int(arm_w * 0.85), joint="curve")
            draw.line([shoulder, elbow], fill=shirt, width=arm_w, joint="curve")
        for p, c, r in (
            (shoulder, shirt, arm_w / 2),
            (elbow, shirt if app.long_sleeves else skin, arm_w * 0.45),
        ):
            draw.ellipse(box(p[0] - r, p[1] - r, p[0] + r, p[1] + r), fill=c)
        r = arm_w * 0.6
        draw.ellipse(box(hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r), fill=skin)
        if pose == 2 and side == 1:  # phone
            draw.rectangle(
                box(hand[0] - 2, hand[1] - 0.05 * t, hand[0] + 3, hand[1] - 0.01 * t),
                fill=(20, 20, 20, 255),
            )

    # --- bags in front.
    if _BAGS[app.bag] == "shoulder":
        bx = cx + ww + 0.015 * t
        draw.line(
            [(cx - sw * 0.6, sy), (bx + 0.03 * t, hip - 0.06 * t)],
            fill=bag_dark,
            width=max(2, int(0.02 * t)),
        )
        draw.rectangle(
            box(bx - 0.02 * t, hip - 0.07 * t, bx + 0.09 * t, hip + 0.05 * t), fill=bag_c
        )
    elif _BAGS[app.bag] == "handbag":
        hx, hy = cx + hands[0][0], hands[0][1]
        draw.rectangle(box(hx - 0.05 * t, hy + 0.015 * t, hx + 0.05 * t, hy + 0.1 * t), fill=bag_c)

    # --- head, hair, hat.
    draw.ellipse(box(cx - hw / 2 - 1, top, cx + hw / 2 + 1, top + hh * 0.7), fill=hair)
    draw.ellipse(box(cx - hw / 2 + 1, top + hh * 0.22, cx + hw / 2 - 1, top + hh), fill=skin)
    hat = _HATS[app.hat]
    if hat == "cap":
        draw.chord(
            box(cx - hw / 2 - 1, top - hh * 0.12, cx + hw / 2 + 1, top + hh * 0.62),
            180,
            360,
            fill=hat_c,
        )
        draw.rectangle(
            box(cx - hw / 2 - 2, top + hh * 0.17, cx + hw / 2 + 0.08 * t, top + hh * 0.26),
            fill=hat_c,
        )
    elif hat == "beanie":
        draw.chord(
            box(cx - hw / 2 - 1, top - hh * 0.25, cx + hw / 2 + 1, top + hh * 0.75),
            180,
            360,
            fill=hat_c,
        )
        draw.rectangle(
            box(cx - hw / 2 - 1, top + hh * 0.17, cx + hw / 2 + 1, top + hh * 0.3),
            fill=tuple(int(v * 0.75) for v in hat_c[:3]) + (255,),
        )

    bbox = img.getchannel("A").point(lambda v: 255 if v > 40 else 0).getbbox()
    return img.crop(bbox)


# --------------------------------------------------------------------------------------------
# Cameras and backgrounds
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Camera:
    style: str
    background: Image.Image  # RGB canvas, larger than the images (they are crops of it)
    background_flipped: Image.Image  # its mirror image
    horizon: int  # row of the background canvas where the ground starts
    noise: Image.Image  # RGB sensor noise + 128, same size as the canvas
    gains: np.ndarray  # (3,) per channel multiplicative
    contrast: float
    blur: float  # 0 = sharp, else downscale factor before upscaling back
    height_range: tuple  # (lo, hi) person heights in px


def _muted(rng: np.random.Generator, lo: int = 60, hi: int = 200) -> tuple:
    base = rng.integers(lo, hi)
    return tuple(int(np.clip(base + rng.integers(-40, 41), 0, 255)) for _ in range(3))


def _render_background(
    rng: np.random.Generator, style: str, ch: int, cw: int
) -> tuple[np.ndarray, int]:
    """A textured background canvas of one camera and its horizon row."""
    img = Image.new("RGB", (cw, ch), _muted(rng))
    d = ImageDraw.Draw(img)
    hy = int(ch * rng.uniform(0.38, 0.55))
    if style in ("street", "night"):
        night = style == "night"
        sky = (25, 30, 60) if night else (int(rng.integers(150, 200)), 200, 235)
        d.rectangle([0, 0, cw, hy], fill=sky)
        x = 0
        while x < cw:
            bw = int(rng.integers(40, 110))
            btop = int(hy * rng.uniform(0.0, 0.45))
            col = _muted(rng, 40, 110) if night else _muted(rng, 90, 200)
            d.rectangle([x, btop, x + bw, hy], fill=col)
            win = (230, 210, 120) if night else tuple(int(v * 0.6) for v in col)
            for wy in range(btop + 8, hy - 10, 16):
                for wx in range(x + 6, x + bw - 8, 14):
                    if not night or rng.random() < 0.5:
                        d.rectangle([wx, wy, wx + 6, wy + 8], fill=win)
            x += bw + int(rng.integers(0, 12))
        walk = hy + int(0.12 * ch)
        d.rectangle([0, hy, cw, walk], fill=(90, 90, 95) if night else (175, 170, 165))
        for jx in range(0, cw, 28):
            d.line([jx, hy, jx - 10, walk], fill=(70, 70, 70) if night else (150, 145, 140))
        d.rectangle([0, walk, cw, ch], fill=(45, 45, 50) if night else (95, 95, 100))
        for lx in range(0, cw, 60):
            ly = walk + (ch - walk) // 2
            d.rectangle([lx, ly, lx + 30, ly + 4], fill=(220, 200, 60))
    elif style in ("indoor", "corridor"):
        wall = _muted(rng, 150, 230)
        d.rectangle([0, 0, cw, hy], fill=wall)
        for _ in range(int(rng.integers(2, 5))):
            fx = int(rng.integers(0, cw - 40))
            fw, fh = int(rng.integers(25, 60)), int(rng.integers(30, max(31, hy - 10)))
            d.rectangle(
                [fx, hy - fh, fx + fw, hy], fill=_muted(rng, 60, 200), outline=(60, 50, 40), width=2
            )
        if style == "corridor":
            for bx in range(0, cw, int(rng.integers(40, 70))):
                d.rectangle([bx, 0, bx + 8, hy], fill=tuple(int(v * 0.8) for v in wall))
        d.rectangle([0, hy - 5, cw, hy], fill=(80, 70, 60))
        tile = int(rng.integers(18, 40))
        c1, c2 = _muted(rng, 90, 220), _muted(rng, 90, 220)
        arr = np.asarray(img).copy()
        yy, xx = np.mgrid[hy:ch, 0:cw]
        checker = ((yy - hy) // tile + xx // tile) % 2 == 0
        arr[hy:ch][checker] = c1
        arr[hy:ch][~checker] = c2
        img = Image.fromarray(arr)
        d = ImageDraw.Draw(img)
    elif style == "park":
        d.rectangle([0, 0, cw, hy], fill=(int(rng.integers(140, 190)), 195, 235))
        for _ in range(40):
            tx = int(rng.integers(-20, cw))
            r = int(rng.integers(15, 40))
            g = int(rng.integers(70, 140))
            d.ellipse([tx - r, hy - 1.6 * r, tx + r, hy + 4], fill=(30, g, 40))
        d.rectangle([0, hy, cw, ch], fill=(80, int(rng.integers(130, 170)), 60))
        py = hy + int(rng.uniform(0.15, 0.4) * (ch - hy))
        d.rectangle([0, py, cw, py + int(0.12 * ch)], fill=(190, 165, 120))
    else:  # plaza
        facade = _muted(rng, 120, 210)
        d.rectangle([0, 0, cw, hy], fill=facade)
        step = int(rng.integers(45, 80))
        for px in range(0, cw, step):
            d.rectangle([px, 0, px + 10, hy], fill=tuple(int(v * 0.75) for v in facade))
            d.rectangle(
                [px + 18, hy - int(0.25 * ch), px + step - 8, hy - 4], fill=_muted(rng, 40, 160)
            )
        d.rectangle([0, hy, cw, ch], fill=_muted(rng, 140, 200))
        pave = tuple(int(v) for v in rng.integers(90, 140, 3))
        for py in range(hy, ch, 14):
            d.line([0, py, cw, py], fill=pave)
            off = 0 if ((py - hy) // 14) % 2 else 14
            for px in range(off, cw, 28):
                d.line([px, py, px, py + 14], fill=pave)

    arr = np.asarray(img).astype(np.float32)
    # Low-frequency mottling plus fine texture noise.
    low = rng.normal(0.0, 7.0, (ch // 16 + 2, cw // 16 + 2, 1)).astype(np.float32)
    low = low + rng.normal(0.0, 3.0, low.shape[:2] + (3,)).astype(np.float32)
    low_img = np.stack(
        [
            np.asarray(Image.fromarray(low[..., c]).resize((cw, ch), Image.Resampling.BILINEAR))
            for c in range(3)
        ],
        axis=-1,
    )
    arr += low_img + rng.normal(0.0, 5.0, arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8), hy


def _make_camera(
    rng: np.random.Generator,
    style: str,
    ch: int,
    cw: int,
    person_height: tuple,
    lighting_variation: float,
) -> _Camera:
    """One camera: background, lighting (deviations from neutral scaled by
    ``lighting_variation``), blur, sensor noise and its range of person heights."""
    lo_h, hi_h = person_height
    centre = rng.uniform(lo_h + 0.2 * (hi_h - lo_h), hi_h - 0.25 * (hi_h - lo_h))
    spread = 0.3 * (hi_h - lo_h)
    lo, hi = max(lo_h, centre - spread), min(hi_h, centre + spread)
    background, horizon = _render_background(rng, style, ch, cw)
    brightness = rng.uniform(0.65, 0.8) if style == "night" else rng.uniform(0.8, 1.15)
    cast = rng.uniform(0.9, 1.1, 3)
    contrast = rng.uniform(0.8, 1.1)
    gains = 1.0 + lighting_variation * (brightness * cast / cast.mean() - 1.0)
    noise = np.round(rng.normal(0.0, rng.uniform(2.0, 7.0), (ch, cw, 3)))
    return _Camera(
        style=style,
        background=Image.fromarray(background),
        background_flipped=Image.fromarray(np.ascontiguousarray(background[:, ::-1])),
        horizon=horizon,
        noise=Image.fromarray(np.clip(noise + 128.0, 0, 255).astype(np.uint8)),
        gains=gains.astype(np.float32),
        contrast=float(1.0 + lighting_variation * (contrast - 1.0)),
        blur=float(rng.choice([0.0, 0.0, 0.6, 0.75])),
        height_range=(float(lo), float(hi)),
    )


# --------------------------------------------------------------------------------------------
# Scene layout
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Person:
    app: int  # index into the renderer's appearance list
    pid: int
    pose: int
    flip: bool
    x: int
    y: int
    w: int
    h: int
    occlusion: float = 0.0  # fraction of the box covered by things drawn in front

    @property
    def box(self) -> tuple:
        return (self.x, self.y, self.x + self.w, self.y + self.h)


@dataclasses.dataclass
class _Scene:
    split: str
    index: int
    name: str
    height: int
    width: int
    cam: int
    people: list  # list[_Person], in drawing order (far to near)
    occluders: list  # list[(kind, (x1, y1, x2, y2), colour)]


def _cover(a: tuple, b: tuple) -> float:
    """Fraction of box ``a`` covered by box ``b``."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / float((a[2] - a[0]) * (a[3] - a[1]))


_OCCLUDERS = ("car", "crate", "bush", "bench", "bin")


class SyntheticRenderer:
    """Renders the images of a synthetic dataset on demand (the dataset's ``load_image``).

    Calling ``renderer(split, name)`` returns a fresh ``uint8 (H, W, 3)`` array. ``split`` is
    ``"train"`` or one of ``"gallery"``, ``"query"``, ``"test"`` (queries live in gallery images).
    Rendering is deterministic in ``(seed, split, image index)``; a small thread-safe LRU cache
    (``cache_size`` images, 0 disables) avoids re-rendering recently used images.
    """

    def __init__(
        self,
        seed: int,
        appearances: list,
        cameras: list,
        scenes: dict,
        clutter_per_image: tuple,
        cache_size: int = 16,
        lighting_variation: float = 1.0,
    ):
        self.seed = int(seed)
        self.appearances = appearances
        self.cameras = cameras
        self.scenes = scenes  # {"train": {name: _Scene}, "test": {name: _Scene}}
        self.clutter_per_image = clutter_per_image
        self.cache_size = int(cache_size)
        self.lighting_variation = float(lighting_variation)
        self._sprites: dict = {}
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_cache"] = collections.OrderedDict()
        state["_sprites"] = {}  # deterministic: re-rendered on demand after unpickling
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- sprites -------------------------------------------------------------------------------

    def sprite(self, app: int, pose: int) -> Image.Image:
        """The canonical RGBA sprite of appearance ``app`` in ``pose`` (rendered once)."""
        key = (app, pose)
        spr = self._sprites.get(key)
        if spr is None:
            spr = _render_sprite(self.appearances[app], pose)
            self._sprites[key] = spr
        return spr

    def aspect(self, app: int, pose: int) -> float:
        """Width / height of the sprite."""
        w, h = self.sprite(app, pose).size
        return w / h

    # -- lookup --------------------------------------------------------------------------------

    def scene(self, split: Optional[str], name: str) -> _Scene:
        """The layout of one image (raises ``KeyError`` with a clear message if unknown).

        ``split=None`` looks the name up in every split (names are unique in the dataset).
        """
        if split is None:
            for scenes in self.scenes.values():
                if name in scenes:
                    return scenes[name]
            raise KeyError(f"synthetic dataset: no image named {name!r} in any split")
        scenes = self.scenes[_split_group(split)]
        if name not in scenes:
            example = next(iter(scenes)) if scenes else "<none>"
            raise KeyError(
                f"synthetic dataset: no image named {name!r} in split {split!r} "
                f"({len(scenes)} images, named like {example!r})"
            )
        return scenes[name]

    def __call__(self, split: Optional[str], name: str) -> np.ndarray:
        """Renders (or fetches from the cache) image ``name`` of ``split``."""
        scene = self.scene(split, name)
        key = (scene.split, name)
        if self.cache_size > 0:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    return hit.copy()
        img = self.render(scene)
        if self.cache_size > 0:
            with self._lock:
                self._cache[key] = img
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return img.copy()
        return img

    # -- rendering -----------------------------------------------------------------------------

    def render(self, scene: _Scene) -> np.ndarray:
        """Renders the pixels of ``scene`` (deterministic)."""
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[scene.split], scene.index, 2])
        cam = self.cameras[scene.cam]
        hgt, wid = scene.height, scene.width
        bcw, bch = cam.background.size
        # The horizon lands in the upper half of the image, so people stand on the ground.
        oy = int(np.clip(cam.horizon - rng.uniform(0.25, 0.5) * hgt, 0, bch - hgt))
        ox = int(rng.integers(0, bcw - wid + 1))
        bg = cam.background_flipped if rng.random() < 0.5 else cam.background
        img = bg.crop((ox, oy, ox + wid, oy + hgt))
        draw = ImageDraw.Draw(img)

        lo, hi = self.clutter_per_image
        ref = 0.5 * (cam.height_range[0] + cam.height_range[1])
        for _ in range(int(rng.integers(lo, hi + 1))):
            _draw_clutter(draw, rng, hgt, wid, ref)

        for p in scene.people:
            spr = self.sprite(p.app, p.pose).resize((p.w, p.h), Image.Resampling.BILINEAR)
            if p.flip:
                spr = spr.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            img.paste(spr, (p.x, p.y), spr)

        draw = ImageDraw.Draw(img)
        for kind, b, colour in scene.occluders:
            _draw_object(draw, kind, b, colour)

        if cam.blur > 0:
            small = (max(8, int(wid * cam.blur)), max(8, int(hgt * cam.blur)))
            img = img.resize(small, Image.Resampling.BILINEAR).resize(
                (wid, hgt), Image.Resampling.BILINEAR
            )

        # Camera lighting (per-channel LUT) with a little per-image jitter, then sensor noise.
        jitter = rng.uniform(0.93, 1.07) * rng.uniform(0.97, 1.03, 3)
        gains = cam.gains * (1.0 + self.lighting_variation * (jitter - 1.0))
        v = np.arange(256, dtype=np.float32) / 255.0
        lut = ((v[None, :] - 0.5) * cam.contrast + 0.5) * gains[:, None] * 255.0
        lut = np.round(np.clip(lut, 0, 255)).astype(np.int64)
        img = img.point(lut.ravel().tolist())
        ny = int(rng.integers(0, bch - hgt + 1))
        nx = int(rng.integers(0, bcw - wid + 1))
        img = ImageChops.add(img, cam.noise.crop((nx, ny, nx + wid, ny + hgt)), offset=-128)
        return np.asarray(img).copy()


def _split_group(split: Optional[str]) -> str:
    if split == "train":
        return "train"
    if split in ("gallery", "query", "test"):
        return "test"
    raise KeyError(
        f"synthetic dataset: unknown split {split!r} (use 'train', 'gallery', 'query' or 'test')"
    )


def _rand_colour(rng: np.random.Generator) -> tuple:
    if rng.random() < 0.35:  # saturated, shirt-like colours make good confusers
        return _SHIRT_COLOURS[int(rng.integers(len(_SHIRT_COLOURS)))]
    return tuple(int(v) for v in rng.integers(30, 230, 3))


def _draw_object(draw: ImageDraw.ImageDraw, kind: str, b: tuple, colour: tuple) -> None:
    """Draws a non-person object filling box ``b``."""
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    dark = tuple(int(c * 0.6) for c in colour)
    if kind == "car":
        body_top = y1 + 0.35 * h
        draw.rounded_rectangle(
            [x1, body_top, x2, y2 - 0.12 * h], radius=max(1, int(0.1 * h)), fill=colour
        )
        draw.polygon(
            [
                (x1 + 0.2 * w, body_top),
                (x1 + 0.32 * w, y1),
                (x2 - 0.3 * w, y1),
                (x2 - 0.15 * w, body_top),
            ],
            fill=colour,
        )
        draw.polygon(
            [
                (x1 + 0.26 * w, body_top),
                (x1 + 0.35 * w, y1 + 0.08 * h),
                (x2 - 0.33 * w, y1 + 0.08 * h),
                (x2 - 0.2 * w, body_top),
            ],
            fill=(140, 170, 190),
        )
        r = 0.16 * h
        for wx in (x1 + 0.22 * w, x2 - 0.22 * w):
            draw.ellipse([wx - r, y2 - 2 * r, wx + r, y2], fill=(20, 20, 20))
    elif kind == "crate":
        draw.rectangle([x1, y1, x2, y2], fill=colour, outline=dark, width=2)
        draw.line([x1, y1, x2, y2], fill=dark, width=2)
        draw.line([x1, y2, x2, y1], fill=dark, width=2)
    elif kind == "bush":
        g = (40, int(90 + (colour[1] % 80)), 45)
        for i in range(4):
            fx = x1 + (i + 0.5) * w / 4
            draw.ellipse([fx - 0.3 * w, y1 + (i % 2) * 0.15 * h, fx + 0.3 * w, y2], fill=g)
    elif kind == "bench":
        draw.rectangle([x1, y1 + 0.3 * h, x2, y1 + 0.5 * h], fill=colour)
        draw.rectangle([x1, y1, x2, y1 + 0.15 * h], fill=colour)
        for lx in (x1 + 0.1 * w, x2 - 0.15 * w):
            draw.rectangle([lx, y1 + 0.5 * h, lx + max(2, 0.05 * w), y2], fill=dark)
    else:  # bin
        draw.rectangle([x1 + 0.08 * w, y1 + 0.12 * h, x2 - 0.08 * w, y2], fill=colour)
        draw.rectangle([x1, y1, x2, y1 + 0.15 * h], fill=dark)


def _draw_clutter(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, hgt: int, wid: int, ref: float
):
    """Draws one random background object (behind the people); ``ref`` ~ a person's height."""
    kind = ("pole", "crate", "car", "tree", "bin", "sign", "bush", "bench")[int(rng.integers(8))]
    bottom = rng.uniform(0.4, 1.0) * hgt
    s = ref * (0.6 + 0.5 * bottom / hgt) / 100.0  # object scale, crude perspective
    colour = _rand_colour(rng)
    cx = rng.uniform(-0.05, 1.05) * wid
    if kind == "pole":
        ph = rng.uniform(1.0, 2.2) * 100 * s
        pw = max(2.0, rng.uniform(2, 6) * s)
        col = tuple(int(v) for v in rng.integers(40, 120, 3))
        draw.rectangle([cx - pw / 2, bottom - ph, cx + pw / 2, bottom], fill=col)
        if rng.random() < 0.5:
            draw.ellipse(
                [cx - 3 * pw, bottom - ph - 2 * pw, cx + 3 * pw, bottom - ph + pw],
                fill=(230, 230, 190),
            )
        else:
            draw.rectangle(
                [cx - 5 * pw, bottom - ph, cx + 5 * pw, bottom - ph + 6 * pw], fill=colour
            )
    elif kind == "tree":
        th = rng.uniform(120, 220) * s
        draw.rectangle(
            [cx - 0.04 * th, bottom - 0.5 * th, cx + 0.04 * th, bottom], fill=(90, 60, 30)
        )
        g = int(rng.integers(80, 150))
        for _ in range(3):
            dx, dy = rng.uniform(-0.2, 0.2) * th, rng.uniform(-0.1, 0.1) * th
            r = rng.uniform(0.18, 0.3) * th
            draw.ellipse(
                [cx + dx - r, bottom - 0.7 * th + dy - r, cx + dx + r, bottom - 0.7 * th + dy + r],
                fill=(35, g, 40),
            )
    elif kind == "sign":
        sw, sh = rng.uniform(20, 45) * s, rng.uniform(15, 35) * s
        draw.rectangle([cx - 1, bottom - 2.2 * sh, cx + 1, bottom], fill=(60, 60, 60))
        draw.rectangle(
            [cx - sw / 2, bottom - 2.2 * sh, cx + sw / 2, bottom - 1.2 * sh],
            fill=colour,
            outline=(250, 250, 250),
        )
    else:
        size = {
            "crate": (30, 30),
            "car": (190, 75),
            "bin": (25, 45),
            "bush": (70, 40),
            "bench": (90, 40),
        }[kind]
        bw = size[0] * s * rng.uniform(0.7, 1.3)
        bh = size[1] * s * rng.uniform(0.7, 1.3)
        _draw_object(draw, kind, (cx - bw / 2, bottom - bh, cx + bw / 2, bottom), colour)


def _layout_scene(
    rng: np.random.Generator,
    renderer: SyntheticRenderer,
    split: str,
    index: int,
    name: str,
    people: list,
    image_size: tuple,
    portrait_fraction: float,
    occlusion_prob: float,
    max_person_occlusion: float = 0.3,
) -> _Scene:
    """Places ``people`` (list of (appearance index, pid); labeled first) in a new image."""
    hgt, wid = image_size
    if rng.random() < portrait_fraction:
        hgt, wid = wid, hgt
    cam_id = int(rng.integers(len(renderer.cameras)))
    cam = renderer.cameras[cam_id]
    lo_cam, hi_cam = cam.height_range
    hi_cam = min(hi_cam, hgt - 2)
    lo_cam = min(lo_cam, hi_cam)
    placed: list = []
    for app, pid in people:
        pose = int(rng.integers(_NUM_POSES))
        aspect = renderer.aspect(app, pose)
        h0 = rng.uniform(lo_cam, hi_cam)
        best, best_cov = None, 2.0
        for attempt in range(60):
            h = max(lo_cam, h0 * 0.92 ** (attempt // 10))
            h = int(round(h))
            w = max(4, int(round(h * aspect)))
            if w > wid or h > hgt:
                continue
            x = int(rng.integers(0, wid - w + 1))
            foot = int(round(rng.uniform(max(h, 0.5 * hgt), hgt)))
            cand = _Person(app, pid, pose, bool(rng.random() < 0.5), x, foot - h, w, h)
            cov = 0.0
            for q in placed:
                # the one whose feet are higher is farther away and gets covered
                far, near = (q, cand) if q.y + q.h <= foot else (cand, q)
                cov = max(cov, _cover(far.box, near.box), 0.5 * _cover(near.box, far.box))
            if cov <= max_person_occlusion:
                best, best_cov = cand, cov
                break
            if cov < best_cov:
                best, best_cov = cand, cov
        if best is None:
            continue
        # Labeled people are always kept (they are placed first, so rarely crowded).
        if best_cov <= max_person_occlusion or pid != UNLABELED_PID:
            placed.append(best)

    # Drawing order: far (feet higher) to near.
    placed.sort(key=lambda p: p.y + p.h)
    for i, p in enumerate(placed):
        for q in placed[i + 1 :]:
            p.occlusion = max(p.occlusion, _cover(p.box, q.box))

    occluders = []
    if placed and rng.random() < occlusion_prob:
        target = placed[int(rng.integers(len(placed)))]
        kind = _OCCLUDERS[int(rng.integers(len(_OCCLUDERS)))]
        oh = target.h * rng.uniform(0.2, 0.42)
        ow = target.w * (rng.uniform(2.0, 3.5) if kind == "car" else rng.uniform(0.8, 1.8))
        bottom = min(hgt, target.y + target.h + rng.uniform(0.0, 0.08) * target.h)
        ocx = target.x + target.w * (0.5 + rng.uniform(-0.6, 0.6))
        box = (
            float(np.clip(ocx - ow / 2, 0, wid - 4)),
            float(bottom - oh),
            float(np.clip(ocx + ow / 2, 4, wid)),
            float(bottom),
        )
        covs = [_cover(p.box, box) for p in placed]
        if max(covs) <= 0.5:
            for p, c in zip(placed, covs, strict=True):
                p.occlusion = min(1.0, p.occlusion + c)
            occluders.append((kind, box, _rand_colour(rng)))
    return _Scene(split, index, name, hgt, wid, cam_id, placed, occluders)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def _as_range(v, what: str) -> tuple:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    lo, hi = v
    if lo > hi:
        raise ValueError(f"{what}: empty range {v}")
    return lo, hi


def _annotation(scene: _Scene) -> ImageAnnotation:
    boxes = np.asarray([p.box for p in scene.people], np.float32).reshape(-1, 4)
    pids = np.asarray([p.pid for p in scene.people], np.int32)
    return ImageAnnotation(scene.name, boxes, pids, scene.cam, scene.height, scene.width)


def make_synthetic_dataset(
    num_train_ids: int = 50,
    num_test_ids: int = 30,
    num_train_images: int = 400,
    num_gallery_images: int = 150,
    image_size: Sequence[int] = (192, 320),
    gallery_size: int = 50,
    seed: int = 0,
    *,
    extra_gallery_sizes: Sequence[int] = (25,),
    people_per_image: Sequence[int] = (2, 6),
    person_height: Optional[Sequence[float]] = None,
    portrait_fraction: float = 0.1,
    num_cameras: int = 6,
    train_labeled_fraction: float = 0.6,
    appearances_per_test_id: Sequence[int] = (3, 6),
    queries_per_test_id: Sequence[int] = (1, 2),
    num_unlabeled_appearances: int = 80,
    occlusion_prob: float = 0.3,
    lighting_variation: float = 0.5,
    clutter_per_image: Sequence[int] = (3, 8),
    cache_size: int = 16,
    name: str = "synthetic",
) -> PersonSearchDataset:
    """Builds the procedural person-search dataset (layouts now, pixels on demand).

    Args:
      num_train_ids: labeled training identities, pids ``1..num_train_ids``.
      num_test_ids: test identities (disjoint appearances), pids ``1001..`` (``1000 *
        ceil((L + 1) / 1000) + 1..`` in general).
      num_train_images: training scene images.
      num_gallery_images: test scene images (the gallery pool; queries are boxes in them).
      image_size: ``(H, W)`` of the landscape images; portrait ones are ``(W, H)``.
      gallery_size: gallery size of the main protocol ``TestG{gallery_size}`` (listed first).
      seed: everything (identities, cameras, layouts, pixels) is a function of it.
      extra_gallery_sizes: further (usually smaller) protocols, nested in the main one.
      people_per_image: ``(min, max)`` people per image, labeled and unlabeled.
      person_height: ``(min, max)`` person box height in pixels (default ``(40, 130)`` scaled by
        ``H / 192``); each camera uses a sub-range of it.
      portrait_fraction: probability that an image is portrait.
      num_cameras: cameras (background style, lighting, blur, noise, person scale).
      train_labeled_fraction: expected fraction of labeled people in train images (each train
        image has at least one).
      appearances_per_test_id: ``(min, max)`` gallery images that show each test identity.
      queries_per_test_id: ``(min, max)`` queries per test identity.
      num_unlabeled_appearances: size of each split's pool of unlabeled-person appearances.
      occlusion_prob: probability that an image has a foreground object occluding someone.
      lighting_variation: scales how far camera (and per-image) brightness, contrast and colour
        cast stray from neutral: 0 = identical lighting everywhere, 1 = strong changes
        (brightness 0.8-1.15, +-10 % colour cast, contrast 0.8-1.1; night cameras darker).
      clutter_per_image: ``(min, max)`` background objects per image.
      cache_size: images kept by ``load_image``'s LRU cache (0 disables it).
      name: dataset name.

    Returns:
      A ``PersonSearchDataset`` whose ``load_image(split, name)`` renders ``uint8 (H, W, 3)``.
    """
    hgt, wid = (int(v) for v in image_size)
    n_lo, n_hi = _as_range(people_per_image, "people_per_image")
    a_lo, a_hi = _as_range(appearances_per_test_id, "appearances_per_test_id")
    q_lo, q_hi = _as_range(queries_per_test_id, "queries_per_test_id")
    if person_height is None:
        person_height = (40.0 * hgt / 192.0, 130.0 * hgt / 192.0)
    ph = tuple(float(v) for v in _as_range(person_height, "person_height"))
    if n_lo < 1:
        raise ValueError("people_per_image must be >= 1")
    if a_lo < 2:
        raise ValueError("appearances_per_test_id must be >= 2 (query + at least one gallery hit)")
    if q_lo < 1:
        raise ValueError("queries_per_test_id must be >= 1")
    if ph[1] > min(hgt, wid) - 2:
        raise ValueError(f"person_height {ph} does not fit images of size {image_size}")
    if num_train_images * n_hi < num_train_ids:
        raise ValueError("too few training images to show every training identity")

    rng = np.random.default_rng([seed, 0])
    # Identities (train + test are mutually distinct) and unlabeled-person pools.
    labeled = _sample_distinct(rng, num_train_ids + num_test_ids, [], True, "labeled")
    pool_train = _sample_distinct(rng, num_unlabeled_appearances, labeled, False, "unlabeled")
    pool_test = _sample_distinct(rng, num_unlabeled_appearances, labeled, False, "unlabeled")
    appearances = labeled + pool_train + pool_test
    train_pool_idx = np.arange(len(labeled), len(labeled) + len(pool_train))
    test_pool_idx = train_pool_idx + len(pool_train)
    test_pid0 = 1000 * int(math.ceil((num_train_ids + 1) / 1000.0))

    side = max(hgt, wid)
    ch, cw = side + 32, side + 96
    cam_rng = np.random.default_rng([seed, 3])
    styles = list(_BACKGROUND_STYLES)
    cam_rng.shuffle(styles)
    cameras = [
        _make_camera(cam_rng, styles[c % len(styles)], ch, cw, ph, lighting_variation)
        for c in range(num_cameras)
    ]
    renderer = SyntheticRenderer(
        seed,
        appearances,
        cameras,
        {"train": {}, "test": {}},
        (int(clutter_per_image[0]), int(clutter_per_image[1])),
        cache_size,
        lighting_variation,
    )

    # ---- train: balanced labeled slots, at least one labeled person per image.
    assign_rng = np.random.default_rng([seed, 1])
    counts = np.zeros(num_train_ids, np.int64)
    train = []
    for i in range(num_train_images):
        n = int(assign_rng.integers(n_lo, n_hi + 1))
        n_lab = int(np.clip(assign_rng.binomial(n, train_labeled_fraction), 1, n))
        n_lab = min(n_lab, num_train_ids)
        order = np.argsort(counts + assign_rng.random(num_train_ids) * 0.9, kind="stable")
        ids = order[:n_lab]
        counts[ids] += 1
        people = [(int(j), int(j) + 1) for j in ids]
        people += [
            (int(a), UNLABELED_PID)
            for a in assign_rng.choice(train_pool_idx, n - n_lab, replace=False)
        ]
        nm = f"syn_train_{i:05d}.png"
        scene = _layout_scene(
            np.random.default_rng([seed, 1, i, 1]),
            renderer,
            "train",
            i,
            nm,
            people,
            (hgt, wid),
            portrait_fraction,
            occlusion_prob,
        )
        renderer.scenes["train"][nm] = scene
        train.append(_annotation(scene))
    present = set()
    for ann in train:
        present.update(int(p) for p in ann.pids if p > 0)
    if present != set(range(1, num_train_ids + 1)):
        raise ValueError("some training identities could not be placed; use more images")

    # ---- test: each identity shows up in a_j distinct gallery images.
    g_rng = np.random.default_rng([seed, 2])
    n_people = g_rng.integers(n_lo, n_hi + 1, num_gallery_images)
    free = n_people.astype(np.float64).copy()
    members = [[] for _ in range(num_gallery_images)]
    for j in g_rng.permutation(num_test_ids):
        a_j = int(g_rng.integers(a_lo, a_hi + 1))
        avail = np.flatnonzero(free > 0)
        if len(avail) < a_j:
            raise ValueError("too few gallery images / people for the test identities")
        p = free[avail] / free[avail].sum()
        for g in g_rng.choice(avail, size=a_j, replace=False, p=p):
            members[g].append(int(j))
            free[g] -= 1
    gallery = []
    test_scenes = []
    for i in range(num_gallery_images):
        ids = members[i]
        people = [(num_train_ids + j, test_pid0 + 1 + j) for j in ids]
        people += [
            (int(a), UNLABELED_PID)
            for a in g_rng.choice(test_pool_idx, int(n_people[i]) - len(ids), replace=False)
        ]
        nm = f"syn_test_{i:05d}.png"
        scene = _layout_scene(
            np.random.default_rng([seed, 2, i, 1]),
            renderer,
            "test",
            i,
            nm,
            people,
            (hgt, wid),
            portrait_fraction,
            occlusion_prob,
        )
        renderer.scenes["test"][nm] = scene
        test_scenes.append(scene)
        gallery.append(_annotation(scene))

    # ---- queries: the least occluded appearances (ties broken at random).
    where = collections.defaultdict(list)  # pid -> [(occlusion, gallery index, person)]
    for gi, scene in enumerate(test_scenes):
        for p in scene.people:
            if p.pid != UNLABELED_PID:
                where[p.pid].append((p.occlusion + 1e-3 * g_rng.random(), gi, p))
    queries, query_gi = [], []
    for j in range(num_test_ids):
        pid = test_pid0 + 1 + j
        found = sorted(where[pid], key=lambda e: e[0])
        if len(found) < 2:
            raise ValueError(f"test identity {pid} appears in fewer than 2 images")
        n_q = min(int(g_rng.integers(q_lo, q_hi + 1)), len(found) - 1)
        for _, gi, p in found[:n_q]:
            queries.append(
                Query(test_scenes[gi].name, np.asarray(p.box, np.float32), pid, test_scenes[gi].cam)
            )
            query_gi.append(gi)

    # ---- protocols (nested: a smaller gallery keeps a prefix of the distractors).
    sizes = [int(gallery_size)] + [int(s) for s in extra_gallery_sizes if int(s) != gallery_size]
    pid_images = collections.defaultdict(dict)  # pid -> {gallery index: box}
    for gi, ann in enumerate(gallery):
        for b, pid in zip(ann.boxes, ann.pids, strict=True):
            if pid != UNLABELED_PID:
                pid_images[int(pid)][gi] = b
    distractor_orders = []
    for qi, q in enumerate(queries):
        d_rng = np.random.default_rng([seed, 4, qi])
        hits = pid_images[q.pid]
        others = [gi for gi in range(num_gallery_images) if gi not in hits and gi != query_gi[qi]]
        distractor_orders.append([others[k] for k in d_rng.permutation(len(others))])
    protocols = []
    for size in sizes:
        g_idx, g_boxes = [], []
        for qi, q in enumerate(queries):
            hits = sorted(gi for gi in pid_images[q.pid] if gi != query_gi[qi])
            n_d = max(0, size - len(hits))
            idx = hits + distractor_orders[qi][:n_d]
            bx = np.full((len(idx), 4), np.nan, np.float32)
            for k, gi in enumerate(hits):
                bx[k] = pid_images[q.pid][gi]
            g_idx.append(idx)
            g_boxes.append(bx)
        protocols.append(SearchProtocol(protocol_name(size), size, g_idx, g_boxes, "explicit"))

    return PersonSearchDataset(
        name=name,
        train=train,
        gallery=gallery,
        queries=queries,
        protocols=protocols,
        num_train_pids=num_train_ids,
        load_image=renderer,
        cbgm_k1=CBGM_K1,
        cbgm_k2=CBGM_K2,
    )


# --------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------


def save_preview(
    dataset: PersonSearchDataset, path: str, n: int = 8, cols: int = 4, split: Optional[str] = None
) -> None:
    """Writes a PNG grid of ``n`` images with their boxes and pids (for humans).

    Without ``split`` the first half comes from ``train`` and the rest from ``gallery``. Labeled
    boxes are green with their pid, unlabeled ones yellow ("-1"); query boxes are magenta.
    """
    items = []
    if split is None:
        n_train = min(len(dataset.train), (n + 1) // 2)
        items += [("train", a) for a in dataset.train[:n_train]]
        items += [("gallery", a) for a in dataset.gallery[: n - n_train]]
    else:
        anns = dataset.train if split == "train" else dataset.gallery
        items += [(split, a) for a in anns[:n]]
    query_boxes = collections.defaultdict(list)
    for q in dataset.queries:
        query_boxes[q.name].append(q.box)
    tiles = []
    for sp, ann in items:
        im = Image.fromarray(dataset.load_image(sp, ann.name))
        d = ImageDraw.Draw(im)
        for b, pid in zip(ann.boxes, ann.pids, strict=True):
            col = (0, 255, 0) if pid != UNLABELED_PID else (255, 230, 0)
            d.rectangle([float(v) for v in b], outline=col, width=1)
            d.text((float(b[0]) + 2, float(b[1]) + 1), str(int(pid)), fill=col)
        if sp != "train":
            for b in query_boxes.get(ann.name, []):
                d.rectangle(
                    [float(v) - 2 for v in b[:2]] + [float(v) + 2 for v in b[2:]],
                    outline=(255, 0, 255),
                    width=1,
                )
        d.text((3, 3), f"{sp} {ann.name} cam{ann.cam_id}", fill=(255, 255, 255))
        tiles.append(im)
    cell_w = max(t.width for t in tiles)
    cell_h = max(t.height for t in tiles)
    rows = int(math.ceil(len(tiles) / cols))
    sheet = Image.new("RGB", (cols * (cell_w + 4), rows * (cell_h + 4)), (255, 255, 255))
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet.paste(
            t,
            (
                c * (cell_w + 4) + (cell_w - t.width) // 2,
                r * (cell_h + 4) + (cell_h - t.height) // 2,
            ),
        )
    sheet.save(path)
