"""Unit tests of the building blocks against independent (slow, explicit) formulations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.models.deformable_attention import MSDeformAttn
from rfdetr.models.dinov2 import Embeddings, WindowedDinov2
from rfdetr.models.layers import LayerNorm2d, apply_box_delta
from rfdetr.models.position_encoding import sine_box_embedding
from rfdetr.models.transformer import GroupedSelfAttention, proposal_grid


def test_sine_box_embedding_layout() -> None:
    """(cy, cx, w, h) order, sin on even / cos on odd features, t_j = 10000^(2*floor(j/2)/F)."""
    box = torch.tensor([0.1, 0.7, 0.3, 0.05])
    feats = 8
    emb = sine_box_embedding(box, num_feats=feats)
    expected = []
    for value in (box[1], box[0], box[2], box[3]):
        for j in range(feats):
            phase = 2 * math.pi * value.item() / 10000 ** (2 * (j // 2) / feats)
            expected.append(math.sin(phase) if j % 2 == 0 else math.cos(phase))
    # float32 phase (|phase| <= 2 pi x 0.7 = 4.4, a few roundings of 2^-24 relative: ~8e-7) through sin / cos (slope
    # <= 1) against float64 math: 1e-6; measured 8.9e-8 (Zen 4).
    torch.testing.assert_close(emb, torch.tensor(expected), atol=1e-6, rtol=0)


def naive_deformable_attention(attn: MSDeformAttn, query, ref, memory, shapes) -> torch.Tensor:
    """Explicit bilinear sampling (align_corners=False, zero padding) with per-point loops."""
    batch, num_q, dim = query.shape
    heads, levels, points = attn.num_heads, attn.num_levels, attn.num_points
    head_dim = dim // heads
    value = attn.value_proj(memory)
    offsets = attn.sampling_offsets(query).view(batch, num_q, heads, levels, points, 2)
    weights = attn.attention_weights(query).view(batch, num_q, heads, levels * points).softmax(-1)
    weights = weights.view(batch, num_q, heads, levels, points)
    out = torch.zeros(batch, num_q, heads, head_dim)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    for b in range(batch):
        for q in range(num_q):
            for hd in range(heads):
                for lv, (height, width) in enumerate(shapes):
                    grid = value[b, starts[lv] : starts[lv + 1], hd * head_dim : (hd + 1) * head_dim]
                    grid = grid.view(height, width, head_dim)
                    cx, cy, bw, bh = ref[b, q, lv]
                    for p in range(points):
                        x = (cx + offsets[b, q, hd, lv, p, 0] / points * bw * 0.5) * width - 0.5
                        y = (cy + offsets[b, q, hd, lv, p, 1] / points * bh * 0.5) * height - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(head_dim)
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < height and 0 <= xx < width:
                                sample = sample + (1 - abs(x - xx)) * (1 - abs(y - yy)) * grid[yy, xx]
                        out[b, q, hd] += weights[b, q, hd, lv, p] * sample
    return attn.output_proj(out.view(batch, num_q, dim))


def test_deformable_attention_matches_explicit_sampling() -> None:
    torch.manual_seed(0)
    shapes = [(5, 7), (3, 4)]
    attn = MSDeformAttn(dim=16, num_levels=2, num_heads=4, num_points=3)
    for p in attn.parameters():  # non-trivial offsets and weights
        nn.init.normal_(p, std=0.5)
    query = torch.randn(2, 6, 16)
    memory = torch.randn(2, sum(h * w for h, w in shapes), 16)
    ref = torch.cat([torch.rand(2, 6, 2), torch.rand(2, 6, 2) * 0.5 + 0.1], -1)[:, :, None].expand(-1, -1, 2, -1)
    with torch.no_grad():
        ours = attn(query, ref, memory, shapes)
        expected = naive_deformable_attention(attn, query, ref, memory, shapes)
    # The same sums in another order (grid_sample vs per-point loops): float32 bound K x 2^-24 x magnitude with K = 24
    # samples (2 levels x 3 points x 4 corners) + 16 output_proj terms, |out| <= 7.4: 1.8e-5, within the allowed
    # 1e-5 + 1e-5 x |expected| (8.4e-5 at 7.4); measured 1.9e-6 (Zen 4).
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_grouped_self_attention_layout_and_groups() -> None:
    """Packed q/k/v layout equals nn.MultiheadAttention; groups never see each other."""
    torch.manual_seed(0)
    attn = GroupedSelfAttention(16, 4)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    mha.load_state_dict(attn.state_dict())
    qk, v = torch.randn(2, 12, 16), torch.randn(2, 12, 16)
    with torch.no_grad():
        # Same products, another kernel: float32 bound K x 2^-24 x magnitude, K = 16 (dim) + 12 (keys) + 16 (out_proj)
        # terms of |.| <= ~3: 8e-6 <= 1e-5 + 1e-5 x |expected|; measured 0 (the same kernels here, Zen 4).
        torch.testing.assert_close(attn(qk, v), mha(qk, qk, v, need_weights=False)[0], atol=1e-5, rtol=1e-5)
        grouped = attn(qk, v, num_groups=3)
        for g in range(3):
            rows = slice(4 * g, 4 * (g + 1))
            # A group alone is the same arithmetic as that group in the batch (each softmax runs over the group's 4
            # keys either way): float32 bound (16 + 4 + 16 terms) x 2^-24 x |out| <= 0.78 ~ 1.7e-6, allowed
            # 1e-6 + 1e-6 x |expected| (1.8e-6); measured 0 (bit-equal, Zen 4).
            torch.testing.assert_close(grouped[:, rows], attn(qk[:, rows], v[:, rows]), atol=1e-6, rtol=1e-6)


def test_layer_norm_2d_is_channel_layer_norm() -> None:
    norm = LayerNorm2d(6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 6, 3, 5)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected)


def test_box_delta_reparam() -> None:
    ref = torch.tensor([0.5, 0.4, 0.2, 0.1])
    delta = torch.tensor([1.0, -2.0, 0.0, math.log(2.0)])
    torch.testing.assert_close(apply_box_delta(delta, ref), torch.tensor([0.7, 0.2, 0.2, 0.2]))


def test_proposal_border_masking_only_on_wide_maps() -> None:
    """Trap 15.6: cells outside (0.01, 0.99) are invalid, which only happens for >= 50 cells per side."""
    proposals, valid = proposal_grid(((24, 24),), torch.device("cpu"))
    assert valid is None and proposals.shape == (576, 4)
    torch.testing.assert_close(proposals[25], torch.tensor([1.5 / 24, 1.5 / 24, 0.05, 0.05]))
    proposals, valid = proposal_grid(((52, 40),), torch.device("cpu"))
    grid = valid.view(52, 40)
    assert not grid[0].any() and not grid[-1].any() and grid[1:-1].all()
    assert not proposals[~valid].any()


def test_pos_embed_interpolation_rule() -> None:
    """Skipped only for N == pe^2 on a square input; otherwise bicubic + antialias in float32 (trap 15.1)."""
    emb = Embeddings(patch_size=4, width=8, pos_grid=6)
    nn.init.normal_(emb.position_embeddings)
    assert emb.interpolate_pos_encoding(6, 6, square_input=True) is emb.position_embeddings
    out = emb.interpolate_pos_encoding(4, 9, square_input=False)
    grid = emb.position_embeddings[:, 1:].reshape(1, 6, 6, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 9), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(out[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 36, 8))
    torch.testing.assert_close(out[:, :1], emb.position_embeddings[:, :1])
    # Non-square input whose token count happens to equal pe^2 is still resized (to the same grid).
    assert emb.interpolate_pos_encoding(6, 6, square_input=False) is not emb.position_embeddings


@pytest.mark.parametrize(("grid_h", "grid_w", "num_windows"), [(4, 6, 2), (6, 9, 3), (5, 5, 1)])
def test_window_partition_round_trip(grid_h: int, grid_w: int, num_windows: int) -> None:
    vit = WindowedDinov2(8, 1, 2, patch_size=2, pos_grid=2, num_windows=num_windows, out_feature_indexes=(1,))
    tokens = torch.randn(2, 1 + grid_h * grid_w, 8)
    windows = vit._window(tokens, grid_h, grid_w)
    nw = num_windows
    assert windows.shape == (2 * nw * nw, 1 + grid_h * grid_w // (nw * nw), 8)
    # Window b*nw^2 + r*nw + c holds the patch block (r, c) of image b, row-major, after its own CLS copy.
    patches = tokens[:, 1:].reshape(2, grid_h, grid_w, 8)
    h, w = grid_h // nw, grid_w // nw
    last = (2 - 1) * nw * nw + (nw - 1) * nw + (nw - 1)
    torch.testing.assert_close(windows[last, 1:], patches[1, -h:, -w:].reshape(h * w, 8))
    torch.testing.assert_close(windows[last, 0], tokens[1, 0])
    unwindowed = vit._unwindow(windows[:, 1:], grid_h, grid_w)
    torch.testing.assert_close(unwindowed, patches.permute(0, 3, 1, 2))


def _small_vit() -> WindowedDinov2:
    torch.manual_seed(0)
    vit = WindowedDinov2(16, 4, 2, patch_size=4, pos_grid=4, num_windows=2, out_feature_indexes=(1, 2, 4))
    for block in vit.encoder.layer:  # non-trivial layer scales and norms, so every term of the block matters
        for param in (block.layer_scale1.lambda1, block.layer_scale2.lambda1, block.norm1.weight, block.norm2.bias):
            nn.init.uniform_(param, 0.5, 1.5)
    return vit.eval()


def test_vit_inference_workspace_path_matches_autograd_path() -> None:
    """Without autograd the blocks write into a per-thread Workspace; the taps equal the autograd forward's."""
    from rfdetr.models.dinov2 import Workspace

    vit = _small_vit()
    for size in (16, 24, 16):  # a new token layout replaces the workspace; going back replaces it again
        pixels = torch.randn(2, 3, size, size)
        expected = vit(pixels)  # grad mode: the plain path
        assert expected[0].requires_grad
        with torch.no_grad():
            got = vit(pixels)
        workspace = Workspace._local.workspace
        assert workspace is not None and workspace.key[0] == 2 * 4 * (1 + (size // 8) ** 2)
        # The same ops written into preallocated buffers: at most a different reduction order.
        # float32 bound per block K x 2^-24 x |x| with K <= 64 (MLP width) and |x| <= 3: 1.1e-5, within the allowed
        # 1e-5 + 1e-5 x |expected| (4e-5 at 3); measured 0 (bit-equal, Zen 4).
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
        # inference_mode gets its own buffers (inference tensors cannot be written outside inference mode), and
        # no_grad afterwards must still work.
        with torch.inference_mode():
            got = vit(pixels)
        assert Workspace._local.workspace.key[-1] is True
        with torch.no_grad():
            again = vit(pixels)
        for a, b, c in zip(got, again, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            torch.testing.assert_close(a, c.detach(), rtol=1e-5, atol=1e-5)


def test_vit_workspace_only_for_eval_inference() -> None:
    """Train mode (even under no_grad), grad mode and tracing keep the plain path."""
    from rfdetr.models.dinov2 import Workspace

    vit = _small_vit()
    pixels = torch.randn(1, 3, 16, 16)
    Workspace._local.workspace = None
    vit.train()
    with torch.no_grad():
        vit(pixels)
    vit.eval()
    vit(pixels)
    with torch.no_grad():
        torch.jit.trace(vit, pixels, strict=False, check_trace=False)
    assert Workspace._local.workspace is None
    with torch.no_grad():
        vit(pixels)
    assert Workspace._local.workspace is not None


def test_vit_workspace_outputs_do_not_alias_the_buffers() -> None:
    """A second forward must not change the first forward's outputs (they live outside the workspace)."""
    vit = _small_vit()
    with torch.no_grad():
        first = [t.clone() for t in vit(torch.randn(1, 3, 16, 16))]
        kept = vit(torch.randn(1, 3, 16, 16))
        kept_copy = [t.clone() for t in kept]
        vit(torch.randn(1, 3, 16, 16))
    for a, b in zip(kept, kept_copy, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(first[0], kept_copy[0])


def test_vit_workspace_is_per_thread() -> None:
    """Concurrent forwards in two threads each use their own buffers and give the single-thread result."""
    import threading

    vit = _small_vit()
    inputs = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    with torch.no_grad():
        expected = [vit(x)[-1] for x in inputs]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}

    def work(index: int) -> None:
        with torch.no_grad():
            for _ in range(20):
                results[index].append(vit(inputs[index])[-1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(2):
        assert len(results[index]) == 20
        for out in results[index]:
            torch.testing.assert_close(out, expected[index], rtol=0, atol=0)


def test_vit_bf16_autocast_skips_the_workspace() -> None:
    """Under CPU autocast the linears run in bf16, so the fp32 workspace path must not be taken."""
    vit = _small_vit()
    pixels = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        reference = vit(pixels)[-1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = vit(pixels)[-1]
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits (unit roundoff 2^-8, 0.4%): each linear rounds its input, weight and output, ~3 x
    # 2^-8 = 1.2% relative, over 4 blocks x (qkv, proj, 2 MLP) = 16 products: ~5% if the errors add like random ones,
    # 19% if all add up; |out| <= 2.9, allowed 0.1 + 0.1 x |expected|. Measured 0.019 abs (0.7% of the magnitude) on
    # the Zen 4 host (AVX512-BF16), 5x under the 0.1 atol alone.
    torch.testing.assert_close(out.float(), reference, rtol=0.1, atol=0.1)
