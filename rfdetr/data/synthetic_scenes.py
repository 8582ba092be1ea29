"""A harder synthetic instance-segmentation set than the demo's, to compare mask heads (#27).

Compared with :mod:`rfdetr.data.synthetic` (three convex classes that never touch, on a smooth gradient):

- seven classes, four of them non-convex: circle, square, triangle, ring (an annulus with a real hole), crescent,
  cross, star; random rotation, and aspect jitter on the classes that stay recognisable with it;
- circumradii log-uniform over 0.04-0.35 of the shorter image side (about 8 to 67 pixels at 192x192), so the smallest
  objects are two or three mask pixels wide at stride 4;
- touching and occluding objects: a share of the objects is placed next to an earlier one, and later objects are
  painted over earlier ones. Each annotation is the object's VISIBLE part (its mask minus everything painted above
  it), with bbox and area from that visible mask; an object left less than ``min_visible`` of its area or fewer than
  ``min_visible_px`` pixels is dropped from the annotations and counted (its visible fragment stays in the image,
  as an unlabelled sliver would in a real export);
- textured backgrounds (gradient + noise, stripes, checkerboards, low-frequency colour noise), textured objects
  (stripes or noise inside) and some low-contrast objects. The task stays well posed: an object's colour is chosen
  against the pixels it covers and borders, and an object that touches an earlier one of a similar colour gets an
  outline so that the two stay separable.

Layout, placeholder category and the three COCO encodings are those of :mod:`rfdetr.data.synthetic`. A polygon is
written only where it is exact: for an object that nothing occludes, that has no hole and that lies inside the image
(every shape is rasterised from its rounded polygon by pycocotools, the same rasteriser that decodes it). Rings and
occluded objects (whose visible part may have holes or several pieces) are written as RLE.

Everything is a function of the seed: image ``i`` of a split has its own random stream, so changing the number of
training images leaves valid and test unchanged. Command::

    python -m rfdetr.data.synthetic_scenes --output DIR [--train 400 --valid 50 --test 250 --size 192 --seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from rfdetr.data.synthetic import (
    coco_categories,
    encode_segmentation,
    image_file_name,
    mask_bbox,
    save_image,
    write_coco_split,
)
from rfdetr.util.cli import run_command

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "ring", "crescent", "cross", "star")
# Classes whose identity survives stretching (a stretched star or crescent reads as another shape less clearly).
ASPECT_JITTER_CLASSES = frozenset({"circle", "square", "triangle", "ring", "cross"})
ENCODING_NAMES: tuple[str, ...] = ("polygon", "rle", "uncompressed_rle")
# RGB distance (0..441) an object's colour keeps from most of the pixels it covers and borders; low-contrast objects
# sit in LOW_CONTRAST instead. Noise of the textures is ~10-25 per channel, so 70 stays clearly visible.
MIN_CONTRAST = 70.0
LOW_CONTRAST = (35.0, 50.0)
# Touching objects closer than this in colour get an outline, so that the boundary between them is visible.
SIMILAR_COLOUR = 60.0


@dataclass(frozen=True)
class SceneSpec:
    """What :func:`write_scene_dataset` renders.

    Attributes:
        splits: number of images per split (train is for training, valid for model selection, test held out).
        width / height: image size in pixels.
        max_objects: objects per image are uniform in 1..max_objects (before occlusion drops).
        radius: range of circumradii (before the aspect stretch) as fractions of the shorter image side, sampled
            log-uniformly.
        near_fraction: share of the objects (after the first) placed touching or overlapping an earlier one.
        min_visible: an object whose visible part is less than this fraction of its area is dropped.
        min_visible_px: ... or fewer than this many pixels.
        placement_tries: positions tried for a new object before one that hides an earlier object is accepted.
        low_contrast_fraction: share of low-contrast objects.
        textured_fraction: share of objects filled with stripes or noise instead of one colour.
        seed: everything is a function of this seed.
    """

    splits: tuple[tuple[str, int], ...] = (("train", 400), ("valid", 50), ("test", 250))
    width: int = 192
    height: int = 192
    max_objects: int = 8
    radius: tuple[float, float] = (0.04, 0.35)
    near_fraction: float = 0.4
    min_visible: float = 0.25
    min_visible_px: int = 12
    placement_tries: int = 3
    low_contrast_fraction: float = 0.15
    textured_fraction: float = 0.45
    seed: int = 0


@dataclass
class Shape:
    """One object's geometry in image pixels.

    Attributes:
        category: class index into :data:`CLASS_NAMES`.
        outer: float64 [V, 2] (x, y) outline, rounded to the 2 decimals written to the JSON.
        hole: float64 [U, 2] outline of the hole (rings), or None.
        area: exact area of the shape (outer minus hole), including any part outside the image.
        centre / radius: where it was placed and its circumradius (for placing neighbours).
    """

    category: int
    outer: np.ndarray
    hole: np.ndarray | None
    area: float
    centre: tuple[float, float]
    radius: float


@dataclass
class SceneObject:
    """A painted object: its shape, in-image mask bool [H, W], visible mask bool [H, W] and fill colour."""

    shape: Shape
    mask: np.ndarray
    visible: np.ndarray
    colour: np.ndarray
    dropped: bool = False


@dataclass
class SplitCounts:
    """What was written for one split."""

    images: int = 0
    objects: Counter = field(default_factory=Counter)  # class name -> annotations
    dropped: Counter = field(default_factory=Counter)  # class name -> objects dropped as mostly hidden
    occluded: int = 0  # annotations whose visible part is smaller than the in-image shape (something lies above)
    encodings: Counter = field(default_factory=Counter)  # encoding name -> annotations


def _polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of a simple polygon [V, 2]."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _circle(n: int = 48) -> np.ndarray:
    t = 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _unit_shape(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Outline (and hole) of a shape of circumradius ~1 centred at 0, before rotation: ([V, 2], [U, 2] or None)."""
    if kind == "circle":
        return _circle(), None
    if kind == "square":
        return _circle(4), None  # corners on the unit circle; the random rotation makes the tilt irrelevant
    if kind == "triangle":
        return _circle(3), None
    if kind == "ring":
        return _circle(), _circle() * float(rng.uniform(0.4, 0.65))  # make_shape may resize the hole
    if kind == "crescent":
        # A disc of radius 1 minus a disc of radius u whose centre is v along +x: the two circles cross at (xs, +-ys).
        # v + u > 1.1 keeps a clear bite; 1 + v - u >= 0.3 keeps the back at least 0.3 thick.
        u = float(rng.uniform(0.8, 1.0))
        v = float(rng.uniform(max(0.3, 1.1 - u), 0.6))
        xs = (v * v + 1 - u * u) / (2 * v)
        phi = math.atan2(math.sqrt(max(1 - xs * xs, 0.0)), xs)  # where the outer arc starts
        psi = math.atan2(math.sqrt(max(1 - xs * xs, 0.0)), xs - v)  # the same point seen from the bite's centre
        outer_t = np.linspace(phi, 2 * math.pi - phi, 40)
        inner_t = np.linspace(2 * math.pi - psi, psi, 24)[1:-1]  # back along the bite, tips not repeated
        outer = np.stack([np.cos(outer_t), np.sin(outer_t)], axis=1)
        inner = np.stack([v + u * np.cos(inner_t), u * np.sin(inner_t)], axis=1)
        return np.concatenate([outer, inner]), None
    if kind == "cross":
        w = float(rng.uniform(0.22, 0.38))  # arm half-width, arm length 1
        quarter = np.array([[w, 1.0], [w, w], [1.0, w]])
        rot = np.array([[0.0, -1.0], [1.0, 0.0]])  # 90 degrees, applied to row vectors as p @ rot
        parts = [quarter @ np.linalg.matrix_power(rot, k) for k in range(4)]
        return np.concatenate(parts), None
    if kind == "star":
        inner = float(rng.uniform(0.38, 0.55))
        t = math.pi * np.arange(10) / 5 - math.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1), None
    raise ValueError(f"unknown shape {kind!r}")


def make_shape(category: int, rng: np.random.Generator, centre: tuple[float, float], radius: float) -> Shape:
    """A shape of class ``category`` with circumradius ``radius`` pixels at ``centre`` (x, y), randomly rotated and,
    for :data:`ASPECT_JITTER_CLASSES`, stretched by an aspect ratio in [0.75, 1.33]."""
    kind = CLASS_NAMES[category]
    outer, hole = _unit_shape(kind, rng)
    if hole is not None:
        # At least 2.5 pixels of hole radius and 2 of band, so that the hole and the band survive rasterisation at
        # the smallest sizes (when the ring is too small for both, it keeps its sampled proportion).
        lo, hi = 2.5 / radius, 1 - 2.0 / radius
        if lo <= hi:
            hole = _circle() * float(np.clip(np.linalg.norm(hole[0]), lo, hi))
    aspect = float(np.exp(rng.uniform(math.log(0.75), math.log(1.33)))) if kind in ASPECT_JITTER_CLASSES else 1.0
    stretch = np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)])
    angle = float(rng.uniform(0, 2 * math.pi))
    rot = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])

    def place(poly: np.ndarray) -> np.ndarray:
        # Rounded to the 2 decimals of the JSON so that the written polygon rasterises to exactly this mask.
        return np.round((poly * stretch) @ rot * radius + np.asarray(centre), 2)

    outer_px = place(outer)
    hole_px = place(hole) if hole is not None else None
    area = _polygon_area(outer_px) - (_polygon_area(hole_px) if hole_px is not None else 0.0)
    return Shape(category, outer_px, hole_px, area, centre, radius)


def _rasterise(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool [H, W] mask of a polygon [V, 2] by pycocotools (which decodes polygon annotations), clipped to the image."""
    rle = mask_utils.frPyObjects([poly.ravel().tolist()], height, width)
    return mask_utils.decode(mask_utils.merge(rle)).astype(bool)


def shape_mask(shape: Shape, height: int, width: int) -> np.ndarray:
    """The in-image pixels of ``shape``: bool [H, W], the hole cut out."""
    mask = _rasterise(shape.outer, height, width)
    if shape.hole is not None:
        mask &= ~_rasterise(shape.hole, height, width)
    return mask


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return yy, xx


def _direction(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Pixel coordinate along a random direction: float32 [H, W]."""
    yy, xx = _grid(height, width)
    a = rng.uniform(0, math.pi)
    return (xx * math.cos(a) + yy * math.sin(a)).astype(np.float32)


def _colour_pair(rng: np.random.Generator, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Two colours whose RGB distance is in [lo, hi] (for stripes and checkerboards)."""
    c0 = rng.uniform(40, 215, size=3)
    step = rng.normal(size=3)
    c1 = np.clip(c0 + step / np.linalg.norm(step) * rng.uniform(lo, hi), 0, 255)
    return c0, c1


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured background, float32 [H, W, 3] in 0..255: gradient + noise, stripes, checkerboard or low-frequency
    colour noise (blobs), each with pixel noise. None of them has sharp-edged isolated shapes, so nothing in the
    background looks like an unlabelled object."""
    kind = int(rng.integers(4))
    if kind == 0:  # gradient + noise
        c0, c1 = rng.uniform(30, 225, size=(2, 3))
        t = _direction(rng, height, width)
        t = ((t - t.min()) / max(float(np.ptp(t)), 1.0))[..., None]
        img = c0 * (1 - t) + c1 * t
        sigma = rng.uniform(4, 14)
    elif kind == 1:  # stripes, square wave or sinusoid
        c0, c1 = _colour_pair(rng, 25, 80)
        phase = _direction(rng, height, width) / rng.uniform(6, 28)
        wave = (np.sin(2 * math.pi * phase) > 0).astype(np.float32) if rng.random() < 0.5 else \
            0.5 + 0.5 * np.sin(2 * math.pi * phase)
        img = c0 + (c1 - c0) * wave[..., None]
        sigma = rng.uniform(3, 8)
    elif kind == 2:  # checkerboard, rotated
        c0, c1 = _colour_pair(rng, 25, 80)
        cell = rng.uniform(8, 32)
        a = rng.uniform(0, math.pi / 2)
        yy, xx = _grid(height, width)
        u = (xx * math.cos(a) + yy * math.sin(a)) / cell
        v = (-xx * math.sin(a) + yy * math.cos(a)) / cell
        board = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
        img = c0 + (c1 - c0) * board[..., None]
        sigma = rng.uniform(3, 8)
    else:  # low-frequency colour noise (soft blobs): a coarse random grid around one colour, upsampled smoothly
        g = int(rng.integers(3, 9))
        # Around a base colour rather than anywhere in RGB: a rainbow of blobs would leave few colours for objects.
        coarse = rng.uniform(50, 205, size=3) + rng.uniform(-55, 55, size=(g, g, 3))
        # PIL's bicubic resize per channel: the same smooth blobs as scipy.ndimage.zoom, ~50x faster.
        img = np.stack([np.asarray(Image.fromarray(coarse[..., c].astype(np.float32))
                                   .resize((width, height), Image.Resampling.BICUBIC)) for c in range(3)], axis=-1)
        sigma = rng.uniform(4, 10)
    img = img + rng.normal(0, sigma, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.float32)


def _region_pixels(canvas: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The pixels [N, 3] an object covers or borders (its mask dilated by 2), before it is painted."""
    return canvas[ndimage.binary_dilation(mask, iterations=2)]


def choose_colour(rng: np.random.Generator, pixels: np.ndarray, low_contrast: bool) -> np.ndarray:
    """An object colour [3] against the pixels [N, 3] it will cover and border.

    Normal objects: a random colour at RGB distance >= :data:`MIN_CONTRAST` from at least 90% of those pixels (the
    best of 40 tries otherwise), so that stripes or checks of the background cannot swallow it. Low-contrast objects:
    the mean of those pixels moved by a distance in :data:`LOW_CONTRAST` (still visible, but hard).
    """
    if low_contrast:
        mean = pixels.mean(axis=0)
        best, best_err = mean, math.inf
        for _ in range(10):
            step = rng.normal(size=3)
            target = rng.uniform(*LOW_CONTRAST)
            colour = np.clip(mean + step / np.linalg.norm(step) * target, 0, 255)
            err = abs(float(np.linalg.norm(colour - mean)) - target)  # clipping at 0 / 255 may shorten the step
            if err < 1.0:
                return colour
            if err < best_err:
                best, best_err = colour, err
        return best
    candidates = rng.uniform(0, 255, size=(40, 3))
    sample = pixels[:: max(1, len(pixels) // 2000)]  # a few thousand pixels are plenty for a percentile
    dist = np.linalg.norm(sample[None, :, :] - candidates[:, None, :], axis=2)  # [40, N]
    score = np.percentile(dist, 10, axis=1)
    ok = np.flatnonzero(score >= MIN_CONTRAST)
    return candidates[ok[0] if len(ok) else int(np.argmax(score))]


def _luminance(colour: np.ndarray) -> float:
    return float(colour @ np.array([0.299, 0.587, 0.114]))


def paint_object(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray,
                 textured: bool, outline: bool) -> None:
    """Paint one object into ``canvas`` (float32 [H, W, 3], in place) over ``mask`` (bool [H, W]).

    The fill is one colour, or (``textured``) stripes of the colour and a shade of it, or the colour plus strong
    noise. The outline is a 1-pixel band of the mask's edge, darker on light objects and lighter on dark ones.
    """
    height, width = mask.shape
    fill = np.broadcast_to(colour, (height, width, 3)).astype(np.float32)
    if textured:
        if rng.random() < 0.5:
            shade = np.clip(colour + rng.choice([-1.0, 1.0]) * rng.uniform(30, 60), 0, 255)
            stripes = np.sin(2 * math.pi * _direction(rng, height, width) / rng.uniform(3, 8)) > 0
            fill = np.where(stripes[..., None], shade, fill)
        else:
            grain = rng.normal(0, rng.uniform(10, 22), size=(height, width, 1))  # mostly brightness, some colour
            fill = fill + grain + rng.normal(0, 5, size=(height, width, 3))
    canvas[mask] = fill[mask]
    if outline:
        edge = mask & ~ndimage.binary_erosion(mask, border_value=1)  # no outline along the image border
        line = colour * 0.45 if _luminance(colour) > 110 else colour + (255 - colour) * 0.6
        canvas[edge] = line


def _visible_enough(visible_px: int, area: float, spec: SceneSpec) -> bool:
    return visible_px >= spec.min_visible_px and visible_px >= spec.min_visible * area


def render_scene(rng: np.random.Generator, spec: SceneSpec) -> tuple[np.ndarray, list[SceneObject]]:
    """One image and its objects.

    Returns:
        The image, uint8 [H, W, 3], and every painted object in painting order; ``visible`` masks are disjoint, and
        objects with ``dropped`` set were hidden below the visibility limits (not annotated).
    """
    height, width = spec.height, spec.width
    side = min(height, width)
    canvas = background(rng, height, width)
    objects: list[SceneObject] = []
    log_lo, log_hi = math.log(spec.radius[0] * side), math.log(spec.radius[1] * side)
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        category = int(rng.integers(len(CLASS_NAMES)))
        # Class and size are fixed before the placement tries: retrying only the position keeps big objects (which
        # hide more) as frequent as the log-uniform size law says.
        radius = float(np.exp(rng.uniform(log_lo, log_hi)))
        alive = [o for o in objects if not o.dropped]
        # Centres at least 0.7 radius inside the image: objects may be cut by the border, but only mildly (at most
        # ~25% of a disc), so that truncation does not dominate the set.
        mx, my = min(0.7 * radius, width / 2), min(0.7 * radius, height / 2)
        chosen: tuple[Shape, np.ndarray, list[SceneObject]] | None = None
        for _ in range(spec.placement_tries):
            if alive and rng.random() < spec.near_fraction:
                # Touching or overlapping an earlier object: centres 0.55-1.05 of the sum of the circumradii apart.
                other = alive[int(rng.integers(len(alive)))].shape
                a = rng.uniform(0, 2 * math.pi)
                d = (other.radius + radius) * rng.uniform(0.55, 1.05)
                centre = (float(np.clip(other.centre[0] + d * math.cos(a), mx, width - mx)),
                          float(np.clip(other.centre[1] + d * math.sin(a), my, height - my)))
            else:
                centre = (float(rng.uniform(mx, width - mx)), float(rng.uniform(my, height - my)))
            shape = make_shape(category, rng, centre, radius)
            mask = shape_mask(shape, height, width)
            if not _visible_enough(int(mask.sum()), shape.area, spec):
                continue  # mostly outside the image: try another position (nothing painted yet)
            victims = [o for o in alive if not _visible_enough(int((o.visible & ~mask).sum()), o.shape.area, spec)]
            chosen = (shape, mask, victims)
            if not victims:
                break
        if chosen is None:
            continue
        shape, mask, victims = chosen
        low_contrast = rng.random() < spec.low_contrast_fraction
        colour = choose_colour(rng, _region_pixels(canvas, mask), low_contrast)
        # An outline where a touching earlier object has a similar colour (otherwise the boundary between the two
        # would be invisible), and on a third of the others.
        near = ndimage.binary_dilation(mask, iterations=1)
        similar = any((near & o.visible).any() and np.linalg.norm(o.colour - colour) < SIMILAR_COLOUR for o in alive)
        outline = similar or rng.random() < 0.33
        paint_object(rng, canvas, mask, colour, rng.random() < spec.textured_fraction, outline)
        for o in objects:
            o.visible &= ~mask
        for o in victims:
            o.dropped = True
        objects.append(SceneObject(shape, mask, mask.copy(), colour))
    # Faint sensor noise over everything, so that flat fills are not perfectly flat.
    canvas += rng.normal(0, rng.uniform(1.5, 4), size=canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


def _encoding_style(rng: np.random.Generator, obj: SceneObject, height: int, width: int) -> int:
    """0 polygon, 1 RLE, 2 uncompressed RLE: a polygon only where it is exactly the annotation's mask."""
    exact_polygon = (obj.shape.hole is None and bool(np.array_equal(obj.visible, obj.mask))
                     and obj.shape.outer.min() >= 0 and obj.shape.outer[:, 0].max() <= width
                     and obj.shape.outer[:, 1].max() <= height)
    if exact_polygon:
        return int(rng.choice(3, p=[0.5, 0.3, 0.2]))
    return 1 if rng.random() < 0.7 else 2


def _split_key(split: str) -> int:
    # A stable number per split name (Python's hash() of a str changes between runs).
    return zlib.crc32(split.encode("utf-8"))


def write_scene_dataset(root: str | Path, spec: SceneSpec | None = None) -> dict[str, SplitCounts]:
    """Write the dataset under ``root`` (Roboflow COCO layout) and return what each split holds.

    Image ``i`` of split ``s`` is drawn from its own stream seeded with ``(spec.seed, s, i)``: the set is deterministic,
    and a split's images do not depend on the other splits' sizes. Existing files with the same names are overwritten.
    """
    spec = spec or SceneSpec()
    root = Path(root)
    categories = coco_categories(CLASS_NAMES)
    counts: dict[str, SplitCounts] = {}
    for split, count in spec.splits:
        split_dir = root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        stats = counts[split] = SplitCounts(images=count)
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([spec.seed, _split_key(split), index])
            pixels, objects = render_scene(rng, spec)
            file_name = image_file_name(split, index)
            save_image(Image.fromarray(pixels), split_dir / file_name)
            image_id = index + 1  # ids from 1: pycocotools ignores id 0
            images.append({"id": image_id, "file_name": file_name, "width": spec.width, "height": spec.height})
            for obj in objects:
                name = CLASS_NAMES[obj.shape.category]
                if obj.dropped:
                    stats.dropped[name] += 1
                    continue
                style = _encoding_style(rng, obj, spec.height, spec.width)
                stats.objects[name] += 1
                stats.occluded += int(obj.visible.sum() < obj.mask.sum())
                stats.encodings[ENCODING_NAMES[style]] += 1
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.shape.category + 1,
                    "bbox": mask_bbox(obj.visible),
                    "area": float(obj.visible.sum()),
                    "segmentation": encode_segmentation(obj.visible, obj.shape.outer.tolist(), style),
                    "iscrowd": 0,
                })
        write_coco_split(split_dir, f"RT-DETR-Seg synthetic scenes, hard shapes (seed {spec.seed})", categories,
                         images, annotations)
    return counts


def format_counts(counts: dict[str, SplitCounts]) -> str:
    """A small table per split: images, annotations (in all, partly occluded, per class), objects dropped as hidden,
    and encodings."""
    width = max(len(n) for n in CLASS_NAMES)
    lines = [f"{'split':8s} {'images':>6s} {'objects':>7s} {'occluded':>8s} {'dropped':>7s}  " +
             " ".join(f"{n:>{width}s}" for n in CLASS_NAMES) + "  encodings"]
    for split, c in counts.items():
        per_class = " ".join(f"{c.objects[n]:>{width}d}" for n in CLASS_NAMES)
        encodings = ", ".join(f"{k} {c.encodings[k]}" for k in ENCODING_NAMES)
        lines.append(f"{split:8s} {c.images:6d} {sum(c.objects.values()):7d} {c.occluded:8d} "
                     f"{sum(c.dropped.values()):7d}  {per_class}  {encodings}")
        if c.dropped:
            lines.append(f"{'':8s} dropped as hidden: {dict(sorted(c.dropped.items()))}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = dict(SceneSpec().splits)
    parser.add_argument("--output", required=True, help="dataset folder (train/, valid/, test/ are written in it)")
    for split in ("train", "valid", "test"):
        parser.add_argument(f"--{split}", type=int, default=defaults[split], help=f"{split} images")
    parser.add_argument("--size", type=int, default=SceneSpec.width, help="image side in pixels (square images)")
    parser.add_argument("--max_objects", "--max-objects", type=int, default=SceneSpec.max_objects,
                        help="objects per image are 1..this before occlusion drops")
    parser.add_argument("--seed", type=int, default=0, help="the dataset is a function of this seed")
    return parser


def _run(args: argparse.Namespace) -> dict[str, SplitCounts]:
    if args.size < 32 or min(args.train, args.valid, args.test) < 0 or args.max_objects < 1:
        raise ValueError("need --size >= 32, image counts >= 0 and --max_objects >= 1")
    spec = SceneSpec(splits=tuple((s, n) for s, n in (("train", args.train), ("valid", args.valid),
                                                         ("test", args.test)) if n > 0),
                     width=args.size, height=args.size, max_objects=args.max_objects, seed=args.seed)
    start = time.perf_counter()
    counts = write_scene_dataset(args.output, spec)
    print(format_counts(counts))
    print(f"written to {args.output} in {time.perf_counter() - start:.1f}s")
    return counts


def main(args: argparse.Namespace) -> int:
    return run_command("rfdetr.data.synthetic_scenes", _run, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
