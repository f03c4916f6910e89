"""PVTv2 (Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer"), as mmdet builds it.

Module and parameter names follow mmdet's ``PyramidVisionTransformerV2`` (``mmdet/models/backbones/pvt.py``)
and the mmcv bricks it is made of, so that an mmdet checkpoint and an RF-Next structure file
(``module.backbone.layers.3.1.0.ffn.layers.1``) apply as is. Stage ``i`` is ``layers[i]``, a list of
``[patch embedding, encoder layers, norm]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rfdeploy.models import register
from rfdeploy.models.blocks import fan_out_normal, transformer_init


def nlc_to_nchw(x: torch.Tensor, hw_shape: tuple[int, int]) -> torch.Tensor:
    batch, _, channels = x.shape
    return x.transpose(1, 2).reshape(batch, channels, hw_shape[0], hw_shape[1]).contiguous()


def nchw_to_nlc(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2).contiguous()


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: a strided conv (kernel > stride), then LayerNorm over the tokens."""

    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int, stride: int, eps: float = 1e-6):
        super().__init__()
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dims, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.projection(x)
        hw_shape = (x.shape[2], x.shape[3])
        return self.norm(nchw_to_nlc(x)), hw_shape


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from a map shrunk ``sr_ratio`` times per side.

    ``attn`` is a plain ``nn.MultiheadAttention`` (sequence-first), as inside mmcv's ``MultiheadAttention``.
    """

    def __init__(
        self, embed_dims: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True, eps: float = 1e-6
    ):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, bias=qkv_bias)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dims, embed_dims, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(embed_dims, eps=eps)

    def forward(self, x: torch.Tensor, hw_shape: tuple[int, int]) -> torch.Tensor:
        kv = x
        if self.sr_ratio > 1:
            kv = self.norm(nchw_to_nlc(self.sr(nlc_to_nchw(x, hw_shape))))
        q, kv = x.transpose(0, 1), kv.transpose(0, 1)
        # need_weights=True, as mmcv calls it, keeps the explicit softmax path: outputs then match mmdet
        # bit for bit, where the fused kernel behind need_weights=False differs in the last bits.
        out = self.attn(q, kv, kv, need_weights=True)[0]
        return out.transpose(0, 1)


class MixFFN(nn.Module):
    """1x1 conv expand -> 3x3 depthwise conv (positional information) -> GELU -> 1x1 conv project."""

    def __init__(self, embed_dims: int, hidden_dims: int, drop: float = 0.0):
        super().__init__()
        # One Dropout fills both slots, as in mmdet, so fc2 is ``layers.4`` like in its checkpoints.
        dropout = nn.Dropout(drop)
        self.layers = nn.Sequential(
            nn.Conv2d(embed_dims, hidden_dims, kernel_size=1),
            nn.Conv2d(hidden_dims, hidden_dims, kernel_size=3, padding=1, groups=hidden_dims),
            nn.GELU(),
            dropout,
            nn.Conv2d(hidden_dims, embed_dims, kernel_size=1),
            dropout,
        )

    def forward(self, x: torch.Tensor, hw_shape: tuple[int, int]) -> torch.Tensor:
        return nchw_to_nlc(self.layers(nlc_to_nchw(x, hw_shape)))


class PVTEncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + SRA(LN(x)), then x + MixFFN(LN(x))."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        hidden_dims: int,
        sr_ratio: int,
        qkv_bias: bool = True,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims, eps=eps)
        self.attn = SpatialReductionAttention(embed_dims, num_heads, sr_ratio, qkv_bias, eps)
        self.norm2 = nn.LayerNorm(embed_dims, eps=eps)
        self.ffn = MixFFN(embed_dims, hidden_dims)

    def forward(self, x: torch.Tensor, hw_shape: tuple[int, int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), hw_shape)
        return x + self.ffn(self.norm2(x), hw_shape)


class PVTStage(nn.ModuleList):
    """One stage, laid out as mmdet's ``[patch embedding, encoder layers, norm]`` list; returns NCHW."""

    def __init__(self, patch_embed: PatchEmbed, blocks: nn.ModuleList, norm: nn.LayerNorm):
        super().__init__([patch_embed, blocks, norm])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch_embed, blocks, norm = self
        x, hw_shape = patch_embed(x)
        for block in blocks.children():
            x = block(x, hw_shape)
        return nlc_to_nchw(norm(x), hw_shape)


class PyramidVisionTransformerV2(nn.Module):
    """Four stages; stage ``i`` embeds patches at ``embed_dims * num_heads[i]`` channels, runs its encoder
    layers and normalises, returning an NCHW map at stride 4, 8, 16, 32."""

    def __init__(
        self,
        in_channels: int = 3,
        embed_dims: int = 64,
        num_layers: Sequence[int] = (3, 4, 6, 3),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratios: Sequence[int] = (8, 8, 4, 4),
        qkv_bias: bool = True,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        eps: float = 1e-6,
    ):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.layers = nn.ModuleList()
        for i, depth in enumerate(num_layers):
            dims = embed_dims * num_heads[i]
            patch_embed = PatchEmbed(in_channels, dims, patch_sizes[i], strides[i], eps)
            blocks = nn.ModuleList(
                PVTEncoderLayer(dims, num_heads[i], mlp_ratios[i] * dims, sr_ratios[i], qkv_bias, eps)
                for _ in range(depth)
            )
            self.layers.append(PVTStage(patch_embed, blocks, nn.LayerNorm(dims, eps=eps)))
            in_channels = dims

        # mmdet's init_weights; nn.MultiheadAttention keeps its own xavier init of the packed q/k/v projection
        self.apply(lambda module: transformer_init(module, conv_init=fan_out_normal))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


@register(input_shape=(1, 3, 224, 224), description="mmdet PyramidVisionTransformerV2 b0")
def pvt_v2_b0() -> nn.Module:
    return PyramidVisionTransformerV2(embed_dims=32, num_layers=(2, 2, 2, 2))
