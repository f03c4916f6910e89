"""Involution from the paper's equations (Li et al., CVPR 2021, eq. 4 and 6), in the naive Unfold form, written
here independently of rfdeploy: the kernel at output position p for group g is

    H[g, :, p] = W1 . relu(bn(W0 . avgpool_s(X)[p]))                 (1x1 reduce, BN, ReLU, 1x1 span)

and the output is ``Y[c, p] = sum_{(u, v) in k x k} H[g(c), u*k + v, p] * X[c, p*s + (u, v)*d - pad]`` with
``pad = d (k - 1) / 2`` and ``g(c) = c // (C / G)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def generated_kernel(x: torch.Tensor, module) -> torch.Tensor:
    """H: (N, G*k*k, Ho, Wo) from the module's weights, by the functional ops (the module is not called)."""
    pooled = F.avg_pool2d(x, module.stride, module.stride) if module.stride > 1 else x
    reduce, bn, span = module.conv1.conv, module.conv1.bn, module.conv2.conv
    hidden = F.conv2d(pooled, reduce.weight, reduce.bias)
    hidden = F.batch_norm(hidden, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return F.conv2d(F.relu(hidden), span.weight, span.bias)


def aggregate(x: torch.Tensor, kernel: torch.Tensor, k: int, stride: int, dilation: int, groups: int) -> torch.Tensor:
    """Y from X and H: every k x k neighbourhood taken by unfold, weighted by its group's kernel, summed."""
    n, channels = x.shape[:2]
    ho, wo = kernel.shape[2:]
    columns = F.unfold(x, k, dilation, dilation * (k - 1) // 2, stride)
    if columns.shape[-1] != ho * wo:
        raise ValueError(f"the kernel has {ho}x{wo} positions, the unfolded input {columns.shape[-1]}")
    columns = columns.view(n, groups, channels // groups, k * k, ho, wo)
    weights = kernel.view(n, groups, 1, k * k, ho, wo)
    return torch.einsum("ngctpq,ngxtpq->ngcpq", columns, weights).reshape(n, channels, ho, wo)


def involution(x: torch.Tensor, module) -> torch.Tensor:
    return aggregate(x, generated_kernel(x, module), module.kernel_size, module.stride,
                     getattr(module, "dilation", 1), module.groups)
