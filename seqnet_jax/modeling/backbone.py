"""ResNet stem (res1–res4, "feat_res4") and the res5 head (torchvision ``layer4``), NHWC.

Faithful to torchvision's ResNet v1.5 as used by the reference (§2.3, §2.5): explicit symmetric
padding (Flax "SAME" differs for stride 2), stride on the 3×3 conv of a bottleneck, ordinary
BatchNorm (batch statistics in training). Module and variable names mirror torchvision's
(``conv1``, ``bn1``, ``layer3_5``, ``downsample_conv``…) so checkpoint import is a renaming.

ResNet-18/34 (basic blocks) and a ``width`` (channels of the first stage, 64 in torchvision) are
offered for small CPU runs and small GPUs.

**Padding (``canvas``).** Images come padded into a fixed bucket that is usually larger than the
reference's canvas (the batch's largest image rounded up to 32, see ``ops/canvas.py``). Given the
canvas, the stem computes exactly the reference's values at every position inside it:

* An output position inside the canvas of a convolution or pooling window reads input positions
  up to ``k // 2`` beyond the canvas edge, where the reference has its zero padding (and, for the
  max pool, ``-inf``). So the input of every layer with a window larger than 1×1 is set to zero
  outside the canvas at that layer's stride: the 7×7 ``conv1`` (its input, the image, is already
  zero there), the max pool (its input is a ReLU output >= 0, so zero and ``-inf`` padding give
  the same maximum), and ``conv2`` of every bottleneck / ``conv1`` and ``conv2`` of every basic
  block. Inside the canvas these layers then see exactly the reference's inputs.
* Every other layer is pointwise (1×1 convolutions — a strided one reads position ``s * i``,
  inside the canvas for every output inside it — BatchNorm in eval mode, ReLU, the residual
  sum), so its in-canvas outputs depend on in-canvas inputs only; values outside the canvas are
  arbitrary and never read by an in-canvas output. By induction over the layers, every in-canvas
  value equals the reference's; the gradients equal too (the zeroing cuts every path from the
  outside values to the loss).
* Train-mode BatchNorm takes its batch statistics over the canvas positions only, what the
  reference's statistics over its ``N × H × W`` canvas cover.

The canvas at stride ``s`` is ``canvas / s`` (exact: canvases are multiples of 32).
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqnet_jax.modeling.layers import BatchNorm, conv_kernel_init
from seqnet_jax.ops.canvas import region_mask

Array = jax.Array

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def is_bottleneck(depth: int) -> bool:
    return depth >= 50


def check_depth(depth: int) -> None:
    if depth not in STAGE_BLOCKS:
        raise ValueError(f"model.backbone.depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")


def stage_out_channels(depth: int, width: int, stage: int) -> int:
    """Output channels of res{stage+1} (stage 1..4 = torchvision layer1..layer4)."""
    expansion = 4 if is_bottleneck(depth) else 1
    return width * (2 ** (stage - 1)) * expansion


def _conv(features: int, k: int, stride: int, name: str, dtype: Any) -> nn.Conv:
    p = k // 2
    return nn.Conv(
        features,
        (k, k),
        strides=(stride, stride),
        padding=((p, p), (p, p)),
        use_bias=False,
        kernel_init=conv_kernel_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def zero_outside(x: Array, mask: Array | None) -> Array:
    """``x`` with the positions outside ``mask`` (broadcastable to ``x.shape[:-1]``) set to 0."""
    if mask is None:
        return x
    return jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))


class Bottleneck(nn.Module):
    """torchvision Bottleneck (expansion 4, stride on conv2).

    ``mask`` / ``out_mask`` (broadcastable to the input's / the output's ``(B, H, W)``; ``out_mask``
    defaults to ``mask``): the positions that enter train-mode BN statistics; the input of the
    3×3 ``conv2`` is zeroed outside ``mask`` (see the module docstring).
    """

    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: Array, train: bool, mask: Array | None = None, out_mask: Array | None = None
    ) -> Array:
        out_mask = mask if out_mask is None else out_mask
        bn = lambda name: BatchNorm(name=name, dtype=self.dtype)  # noqa: E731
        out = _conv(self.planes, 1, 1, "conv1", self.dtype)(x)
        out = nn.relu(bn("bn1")(out, not train, mask))
        out = zero_outside(out, mask)
        out = _conv(self.planes, 3, self.stride, "conv2", self.dtype)(out)
        out = nn.relu(bn("bn2")(out, not train, out_mask))
        out = _conv(self.planes * 4, 1, 1, "conv3", self.dtype)(out)
        out = bn("bn3")(out, not train, out_mask)
        identity = x
        if self.downsample:
            identity = _conv(self.planes * 4, 1, self.stride, "downsample_conv", self.dtype)(x)
            identity = bn("downsample_bn")(identity, not train, out_mask)
        return nn.relu(out + identity)


class BasicBlock(nn.Module):
    """torchvision BasicBlock (ResNet-18/34). ``mask`` / ``out_mask`` as :class:`Bottleneck`;
    the inputs of both 3×3 convolutions are zeroed outside them."""

    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: Array, train: bool, mask: Array | None = None, out_mask: Array | None = None
    ) -> Array:
        out_mask = mask if out_mask is None else out_mask
        bn = lambda name: BatchNorm(name=name, dtype=self.dtype)  # noqa: E731
        out = _conv(self.planes, 3, self.stride, "conv1", self.dtype)(zero_outside(x, mask))
        out = nn.relu(bn("bn1")(out, not train, out_mask))
        out = zero_outside(out, out_mask)
        out = _conv(self.planes, 3, 1, "conv2", self.dtype)(out)
        out = bn("bn2")(out, not train, out_mask)
        identity = x
        if self.downsample:
            identity = _conv(self.planes, 1, self.stride, "downsample_conv", self.dtype)(x)
            identity = bn("downsample_bn")(identity, not train, out_mask)
        return nn.relu(out + identity)


def _make_stage(depth: int, width: int, stage: int, in_channels: int, stride: int, dtype: Any):
    block_cls = Bottleneck if is_bottleneck(depth) else BasicBlock
    planes = width * (2 ** (stage - 1))
    out_ch = stage_out_channels(depth, width, stage)
    blocks = []
    for i in range(STAGE_BLOCKS[depth][stage - 1]):
        s = stride if i == 0 else 1
        ds = i == 0 and (s != 1 or in_channels != out_ch)
        blocks.append(block_cls(planes, s, ds, dtype=dtype, name=f"layer{stage}_{i}"))
    return blocks


class Backbone(nn.Module):
    """res1–res4: ``images (B, H, W, 3)`` normalised → ``feat_res4 (B, H/16, W/16, C4)``.

    ``canvas (B, 2)``: the reference's padded canvas ``(h, w)`` of each image in input pixels
    (``ops/canvas.py``); inside it the output equals the reference's on that canvas (module
    docstring). ``None``: the whole array is the canvas. The input must be zero outside it.

    ``conv1`` and ``bn1``'s affine parameters are frozen by the optimizer (see train_lib), not here;
    ``bn1``'s running statistics still update in training, as in the reference.
    """

    depth: int = 50
    width: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool, canvas: Array | None = None) -> Array:
        check_depth(self.depth)
        h, w = x.shape[1:3]

        def mask(stride: int):
            if canvas is None:
                return None
            return region_mask(canvas, -(-h // stride), -(-w // stride), stride)

        x = x.astype(self.dtype)
        x = nn.Conv(
            self.width,
            (7, 7),
            strides=(2, 2),
            padding=((3, 3), (3, 3)),
            use_bias=False,
            kernel_init=conv_kernel_init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="conv1",
        )(x)
        m = mask(2)
        x = nn.relu(BatchNorm(name="bn1", dtype=self.dtype)(x, not train, m))
        x = nn.max_pool(zero_outside(x, m), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_ch, at = self.width, 4  # ``at``: the stride of x
        for stage, stride in ((1, 1), (2, 2), (3, 2)):
            for block in _make_stage(self.depth, self.width, stage, in_ch, stride, self.dtype):
                out_at = at * block.stride
                x = block(x, train, mask(at), mask(out_at))
                at = out_at
            in_ch = stage_out_channels(self.depth, self.width, stage)
        return x


def global_max_pool(x: Array) -> Array:
    """``adaptive_max_pool2d(x, 1)``: ``(R, H, W, C)`` → ``(R, C)``, the gradient going to the
    first maximum of each channel, as torch's (index-based) backward does.

    Not ``jnp.max``: its gradient marks the positions *equal* to the forward answer, and under
    ``jit`` XLA may recompute the operand in the backward pass with other roundings, so that
    equality fails for some channels (no gradient) or holds twice; measured on CPU, 1e-6 changes
    of the input moved the res5 head's parameter gradients by up to 80 %.
    """
    r, h, w, c = x.shape
    flat = x.reshape(r, h * w, c)
    idx = jnp.argmax(flat, axis=1)
    return jnp.take_along_axis(flat, idx[:, None, :], axis=1)[:, 0]


class Res5Head(nn.Module):
    """torchvision ``layer4`` on RoI features with global max pooling (§2.5).

    ``x (R, S, S, C4)`` → ``(feat_res4 (R, C4), feat_res5 (R, C5))``: feat_res4 is the max-pooled
    input, feat_res5 the max-pooled layer4 output. ``mask (R,)`` keeps padded RoIs out of the
    batch statistics.
    """

    depth: int = 50
    width: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool, mask: Array | None = None) -> Tuple[Array, Array]:
        feat_res4 = global_max_pool(x)
        in_ch = stage_out_channels(self.depth, self.width, 3)
        m = None if mask is None else mask[:, None, None]
        y = x.astype(self.dtype)
        for block in _make_stage(self.depth, self.width, 4, in_ch, 2, self.dtype):
            y = block(y, train, m)
        feat_res5 = global_max_pool(y)
        return feat_res4.astype(jnp.float32), feat_res5.astype(jnp.float32)


def param_count(tree: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def frozen_backbone_paths() -> Sequence[Tuple[str, ...]]:
    """Parameter paths (relative to the backbone) that are never trained (§2.3)."""
    return (("conv1", "kernel"), ("bn1", "scale"), ("bn1", "bias"))
