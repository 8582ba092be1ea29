"""The hard synthetic set (#27): deterministic, every class, real holes, disjoint visible masks whose boxes and areas
are exact, dropped objects counted, and readable by the dataset class and validate_setup.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import validate_setup
from rfdetr.data.coco import CocoDetection
from rfdetr.data.masks import decode_mask, mask_kind
from rfdetr.data.synthetic import ANNOTATION_FILE, mask_bbox
from rfdetr.data.synthetic_scenes import (
    CLASS_NAMES,
    SceneSpec,
    _split_key,
    get_args_parser,
    main,
    make_shape,
    render_scene,
    shape_mask,
    write_scene_dataset,
)

# 128 px: the smallest ring (circumradius 0.04 * 128 = 5 px) still gets a hole of >= 2.5 px radius.
SPEC = SceneSpec(splits=(("train", 14), ("valid", 3), ("test", 3)), width=128, height=128, seed=3)
RING = CLASS_NAMES.index("ring") + 1


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("scenes")
    return root, write_scene_dataset(root, SPEC)


def _load(root: Path, split: str) -> dict:
    return json.loads((root / split / ANNOTATION_FILE).read_text())


def _masks_by_image(data: dict) -> dict[int, list[tuple[dict, np.ndarray]]]:
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    out: dict[int, list[tuple[dict, np.ndarray]]] = {i: [] for i in sizes}
    for ann in data["annotations"]:
        out[ann["image_id"]].append((ann, decode_mask(ann["segmentation"], *sizes[ann["image_id"]])))
    return out


def test_deterministic_and_splits_independent(tmp_path: Path) -> None:
    spec = SceneSpec(splits=(("train", 2), ("valid", 2)), width=96, height=96, seed=5)
    a = tmp_path / "a"
    write_scene_dataset(a, spec)
    write_scene_dataset(tmp_path / "b", spec)
    write_scene_dataset(tmp_path / "c", SceneSpec(splits=spec.splits, width=96, height=96, seed=6))
    write_scene_dataset(tmp_path / "d", SceneSpec(splits=(("train", 5), ("valid", 2)), width=96, height=96, seed=5))
    text = {k: (tmp_path / k / "train" / ANNOTATION_FILE).read_text() for k in "abc"}
    assert text["a"] == text["b"] and text["a"] != text["c"]
    for name in ("train_0000.jpg", "train_0001.png"):
        assert (a / "train" / name).read_bytes() == (tmp_path / "b" / "train" / name).read_bytes()
    # Each image has its own stream: more training images change neither valid nor the first training images.
    assert (a / "valid" / ANNOTATION_FILE).read_text() == (tmp_path / "d" / "valid" / ANNOTATION_FILE).read_text()
    assert (a / "train" / "train_0001.png").read_bytes() == (tmp_path / "d" / "train" / "train_0001.png").read_bytes()


def test_every_class_and_valid_encodings(scenes: tuple[Path, dict]) -> None:
    root, counts = scenes
    data = _load(root, "train")
    assert [c["name"] for c in data["categories"]] == ["shapes", *CLASS_NAMES]  # placeholder category 0 first
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, len(CLASS_NAMES) + 1))
    kinds = {mask_kind(a["segmentation"]) for a in data["annotations"]}
    assert kinds == {"polygon", "rle", "uncompressed_rle"}
    # A ring has a hole, which a COCO polygon cannot express.
    assert all(mask_kind(a["segmentation"]) != "polygon" for a in data["annotations"] if a["category_id"] == RING)
    assert sum(counts["train"].objects.values()) == len(data["annotations"])
    assert sum(counts["train"].encodings.values()) == len(data["annotations"])


def _surrounded_background(mask: np.ndarray) -> np.ndarray:
    """Pixels [H, W] not in ``mask`` with mask pixels to their left, right, above and below."""
    rows = np.maximum.accumulate(mask, 1) & np.maximum.accumulate(mask[:, ::-1], 1)[:, ::-1]
    cols = np.maximum.accumulate(mask, 0) & np.maximum.accumulate(mask[::-1], 0)[::-1]
    return rows & cols & ~mask


def test_ring_masks_have_holes(scenes: tuple[Path, dict]) -> None:
    # A lone ring: its centre pixel is background enclosed by the mask, at the smallest and largest sizes.
    rng = np.random.default_rng(0)
    for radius in (0.04 * 128, 0.35 * 128):
        mask = shape_mask(make_shape(RING - 1, rng, (64.0, 64.0), radius), 128, 128)
        assert not mask[64, 64] and mask.any()
        assert (ndimage.binary_fill_holes(mask) & ~mask)[64, 64]
    # In the scenes: every ring that nothing hides and the border does not cut has an enclosed hole at its centre.
    whole = 0
    for index in range(SPEC.splits[0][1]):
        for obj in render_scene(np.random.default_rng([SPEC.seed, _split_key("train"), index]), SPEC)[1]:
            if obj.shape.hole is not None and np.array_equal(obj.visible, obj.mask) \
                    and obj.mask.sum() >= 0.97 * obj.shape.area:
                cx, cy = (int(v) for v in obj.shape.centre)
                assert not obj.mask[cy, cx] and (ndimage.binary_fill_holes(obj.mask) & ~obj.mask)[cy, cx]
                whole += 1
    assert whole >= 3
    # In the JSON, where occluders or the border may open the hole (or leave only an arc of a ring that is 25%
    # visible): most rings have background inside, between their sides.
    rings = [m for anns in _masks_by_image(_load(scenes[0], "train")).values() for a, m in anns
             if a["category_id"] == RING]
    with_hole = sum(bool(_surrounded_background(m).any()) for m in rings)
    assert len(rings) >= 5 and with_hole >= 0.75 * len(rings), (with_hole, len(rings))


def test_visible_masks_disjoint_and_boxes_exact(scenes: tuple[Path, dict]) -> None:
    for split in ("train", "test"):
        for anns in _masks_by_image(_load(scenes[0], split)).values():
            if not anns:
                continue
            assert np.sum([m for _, m in anns], axis=0).max() <= 1  # no pixel in two annotations
            for ann, mask in anns:
                assert ann["bbox"] == mask_bbox(mask)
                assert ann["area"] == float(mask.sum())


def test_visibility_rules_and_dropped_counted(tmp_path: Path) -> None:
    # Crowded: big objects, one placement try, so that some objects end up mostly hidden.
    spec = SceneSpec(splits=(("train", 6),), width=96, height=96, radius=(0.2, 0.35), near_fraction=0.8,
                     placement_tries=1, seed=1)
    counts = write_scene_dataset(tmp_path, spec)["train"]
    dropped = 0
    for index in range(6):
        pixels, objects = render_scene(np.random.default_rng([spec.seed, _split_key("train"), index]), spec)
        assert pixels.shape == (96, 96, 3) and pixels.dtype == np.uint8
        for i, obj in enumerate(objects):
            above = np.any([o.mask for o in objects[i + 1:]], axis=0) if i + 1 < len(objects) else False
            assert np.array_equal(obj.visible, obj.mask & ~above)  # visible = mask minus everything painted above
            enough = obj.visible.sum() >= spec.min_visible_px and obj.visible.sum() >= spec.min_visible * obj.shape.area
            assert enough != obj.dropped
            dropped += obj.dropped
    assert dropped > 0 and sum(counts.dropped.values()) == dropped
    annotated = len(_load(tmp_path, "train")["annotations"])
    assert sum(counts.objects.values()) == annotated and counts.occluded > 0


def test_sizes_span_a_wide_range() -> None:
    spec = SceneSpec(width=96, height=96)
    radii = [o.shape.radius for i in range(30) for o in render_scene(np.random.default_rng(i), spec)[1]]
    assert min(radii) < 0.07 * 96 and max(radii) > 0.25 * 96
    assert all(0.04 * 96 - 1e-6 <= r <= 0.35 * 96 + 1e-6 for r in radii)
    # Log-uniform: about as many objects below the geometric mean of the range as above it.
    middle = 96 * math.sqrt(0.04 * 0.35)
    assert 0.3 < np.mean(np.array(radii) < middle) < 0.7


def test_loads_through_the_dataset_class(scenes: tuple[Path, dict]) -> None:
    root = scenes[0]
    ds = CocoDetection(root, "train", masks=True)
    assert ds.class_names == list(CLASS_NAMES) and ds.num_classes == 7
    assert not {k: v for k, v in ds.stats.items() if v}  # nothing clipped, dropped or changed
    by_image = _masks_by_image(_load(root, "train"))
    for index in range(len(ds)):
        _, target = ds.load_sample(index)
        anns = by_image[ds.image_ids[index]]
        masks = target["masks"].numpy()
        assert masks.shape == (len(anns), 128, 128)
        for k, (ann, mask) in enumerate(anns):
            assert np.array_equal(masks[k], mask)
            x, y, w, h = ann["bbox"]
            assert target["boxes"][k].tolist() == [x, y, x + w, y + h]
    image, target = ds[0]
    assert image.shape == (3, 128, 128) and target["masks"].dtype == torch.bool


def test_validate_setup_passes(scenes: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    args = validate_setup.get_args_parser().parse_args(["--dataset", str(scenes[0]), "--skip_env", "--stage", "2"])
    code = validate_setup.main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    assert not [line for line in out.splitlines() if line.startswith(("FAIL", "WARN"))], out
    assert "Summary: 3 PASS, 0 WARN, 0 FAIL" in out


def test_command_prints_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--output", str(tmp_path), "--train", "2", "--valid", "1", "--test", "1", "--size", "64", "--seed", "2"]
    assert main(get_args_parser().parse_args(argv)) == 0
    out = capsys.readouterr().out
    assert "dropped" in out and all(name in out for name in CLASS_NAMES)
    assert {p.name for p in tmp_path.iterdir()} == {"train", "valid", "test"}
    assert main(get_args_parser().parse_args(["--output", str(tmp_path), "--size", "8"])) == 2  # a one-line error
