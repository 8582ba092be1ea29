"""Every preset builds with the checkpoint layout of spec 12.2 / table 1.4 (on the meta device: no memory, no init)."""

from __future__ import annotations

import pytest
import torch

from rfdetr.config import MODEL_PRESETS, ModelConfig
from rfdetr.models import RFDETRModel, build_model

# Spec table 1.4: state-dict tensors and "computed params" (all 13 groups, no buffers).
EXPECTED: dict[str, tuple[int, int]] = {
    "nano": (465, 30_467_298),
    "small": (487, 32_111_170),
    "medium": (509, 33_687_458),
    "large": (509, 33_933_218),
    "base": (487, 32_174_530),
    "seg-preview": (544, 34_153_555),
    "seg-nano": (544, 33_577_475),
    "seg-small": (544, 33_711_107),
    "seg-medium": (572, 35_694_259),
    "seg-large": (572, 35_873_971),
    "seg-xlarge": (600, 38_113_635),
    "seg-2xlarge": (600, 38_648_163),
}


def build_meta(cfg: ModelConfig) -> RFDETRModel:
    with torch.device("meta"):
        return build_model(cfg)


def test_every_preset_is_covered() -> None:
    assert set(EXPECTED) == set(MODEL_PRESETS)


@pytest.mark.parametrize("name", list(MODEL_PRESETS))
def test_preset_state_dict_layout(name: str) -> None:
    cfg = MODEL_PRESETS[name]
    model = build_meta(cfg)
    state = model.state_dict()
    num_tensors, num_params = EXPECTED[name]
    assert len(state) == num_tensors
    assert sum(p.numel() for p in model.parameters()) == num_params
    assert not list(model.buffers())  # no BatchNorm statistics, no _kp_active_mask

    width, dim, queries = cfg.vit_width, cfg.hidden_dim, cfg.group_detr * cfg.num_queries
    vit = "backbone.0.encoder.encoder."
    expected_shapes = {
        vit + "embeddings.position_embeddings": (1, cfg.positional_encoding_size**2 + 1, width),
        vit + "embeddings.patch_embeddings.projection.weight": (width, 3, cfg.patch_size, cfg.patch_size),
        vit + "embeddings.mask_token": (1, width),
        vit + "encoder.layer.11.mlp.fc1.weight": (4 * width, width),
        vit + "layernorm.weight": (width,),
        "backbone.0.projector.stages.0.0.cv1.conv.weight": (dim, 4 * width, 1, 1),
        "backbone.0.projector.stages.0.0.cv2.conv.weight": (dim, 5 * dim // 2, 1, 1),
        "backbone.0.projector.stages.0.0.m.2.cv2.conv.weight": (dim // 2, dim // 2, 3, 3),
        "backbone.0.projector.stages.0.1.weight": (dim,),
        f"transformer.decoder.layers.{cfg.dec_layers - 1}.self_attn.in_proj_weight": (3 * dim, dim),
        f"transformer.decoder.layers.{cfg.dec_layers - 1}.cross_attn.sampling_offsets.weight": (
            cfg.ca_nheads * len(cfg.projector_scale) * cfg.dec_n_points * 2,
            dim,
        ),
        "transformer.decoder.ref_point_head.layers.0.weight": (dim, 2 * dim),
        f"transformer.enc_output.{cfg.group_detr - 1}.weight": (dim, dim),
        f"transformer.enc_out_class_embed.{cfg.group_detr - 1}.weight": (cfg.num_classes + 1, dim),
        f"transformer.enc_out_bbox_embed.{cfg.group_detr - 1}.layers.2.weight": (4, dim),
        "class_embed.bias": (cfg.num_classes + 1,),
        "bbox_embed.layers.2.weight": (4, dim),
        "refpoint_embed.weight": (queries, 4),
        "query_feat.weight": (queries, dim),
    }
    if cfg.segmentation_head:
        expected_shapes.update(
            {
                f"segmentation_head.blocks.{cfg.dec_layers - 1}.dwconv.weight": (dim, 1, 3, 3),
                "segmentation_head.query_features_block.layers.0.weight": (4 * dim, dim),
                "segmentation_head.spatial_features_proj.weight": (dim, dim, 1, 1),
                "segmentation_head.bias": (1,),
            }
        )
    else:
        assert not any(k.startswith("segmentation_head.") for k in state)
    assert {k: tuple(state[k].shape) for k in expected_shapes} == expected_shapes
    assert f"transformer.decoder.layers.{cfg.dec_layers}.norm1.weight" not in state
    assert f"transformer.enc_output.{cfg.group_detr}.weight" not in state


def test_global_blocks_follow_out_feature_indexes() -> None:
    """Trap 15.2: (3,6,9,12) -> global {3,6,9}; Base's (2,5,8,11) -> {2,5,8,11}."""
    for name, expected in (("nano", {3, 6, 9}), ("base", {2, 5, 8, 11})):
        vit = build_meta(MODEL_PRESETS[name]).backbone[0].encoder.encoder
        assert {i for i, blk in enumerate(vit.encoder.layer) if blk.global_attention} == expected


def test_random_init_follows_upstream_priors() -> None:
    """Two-stage heads start as copies of the final heads; box deltas and learned references start at zero."""
    torch.manual_seed(0)
    cfg = MODEL_PRESETS["nano"].replace(group_detr=2, num_queries=10)
    model = build_model(cfg)
    assert torch.allclose(model.class_embed.bias, torch.full((91,), -4.59512), atol=1e-5)
    for head in model.transformer.enc_out_class_embed:
        assert torch.equal(head.weight, model.class_embed.weight)
    assert not model.bbox_embed.layers[2].weight.any() and not model.refpoint_embed.weight.any()
