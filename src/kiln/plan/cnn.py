"""EfficientNet-style convolutional networks: parameters, FLOPs and activation memory from a small config.

A config is a Hugging Face ``EfficientNetConfig``-shaped dict (``model_type: "efficientnet"``; the same
keys: ``width_coefficient``, ``depth_coefficient``, ``depth_divisor``, ``kernel_sizes``, ``in_channels``,
``out_channels``, ``strides``, ``num_block_repeats``, ``expand_ratios``, ``squeeze_expansion_ratio``,
``image_size``, ``num_labels``/``num_classes``) plus one kiln key, ``fix_stem_head`` (EfficientNet-Lite
keeps the 32-channel stem and 1280-channel head unscaled, and its first/last stages unrepeated). A
``squeeze_expansion_ratio`` of 0 means no squeeze-and-excitation (Lite).

The network is stem conv 3x3/2 + BN, MBConv blocks (1x1 expand + BN, k x k depthwise + BN, optional SE,
1x1 project + BN, residual when shapes allow), head conv 1x1 + BN, global pool, linear classifier.
Parameters are counted exactly (convolutions without bias, BN gamma + beta, SE and classifier with bias);
running statistics are buffers, not parameters.

Activation memory is the largest set of tensors alive at once in an eager (PyTorch) forward pass with
explicit "same" padding, walked operator by operator (:meth:`ConvNetSpec.live_sets`). Per image, in
elements, with ``X`` the input image (the caller holds it for the whole pass), ``I`` a block's input (held for
the residual), ``M`` the expanded map, ``P`` its padded copy, ``D`` the depthwise output, ``O`` the block's
output; BatchNorm and ReLU6 are not in place, so each holds its input and output at once:

    expand 1x1 conv     X + I + M + conv(I -> M)
    BN, ReLU6           X + I + 2M
    pad                 X + I + M + P
    depthwise conv      X + I + M + P + conv(P -> D)
    BN, ReLU6           X + I + 2D
    project 1x1 conv    X + I + D + conv(D -> O)
    BN, residual add    X + I + 2O

``conv(x -> y)`` is what one convolution allocates beyond its input. On CPU, PyTorch runs fp32 convolutions
on NCHW tensors through oneDNN, whose kernels use a channel-blocked layout: it reorders the input into a
blocked copy (skipped for inputs with fewer channels than one 8-lane block, like RGB), computes a blocked
output, then copies that to a plain NCHW output while the blocked one is alive. So
``conv(x -> y) = y_blocked + max(x_blocked, y_plain) = y + max(x, y)`` (``y + y`` for an RGB input). On GPU,
cuDNN writes the plain output directly: ``conv(x -> y) = y``. The largest of these sums over the stem,
every block and the head is the activation estimate; it is an estimate and says so.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from kiln.plan.errors import PlanError

CNN_TYPES = frozenset({"efficientnet"})
_B0 = {
    "kernel_sizes": [3, 3, 5, 3, 5, 5, 3],
    "in_channels": [32, 16, 24, 40, 80, 112, 192],
    "out_channels": [16, 24, 40, 80, 112, 192, 320],
    "strides": [1, 2, 2, 2, 1, 2, 1],
    "num_block_repeats": [1, 2, 2, 3, 3, 4, 1],
    "expand_ratios": [1, 6, 6, 6, 6, 6, 6],
}
STEM_CHANNELS = 32
ONEDNN_BLOCK = 8  # fp32 channel block of oneDNN's AVX2 kernels (nChw8c)
HEAD_CHANNELS = 1280


class Block(BaseModel):
    """One MBConv block with its resolved sizes; ``size_in``/``size_out``: spatial side in pixels."""

    model_config = ConfigDict(frozen=True)

    c_in: int
    c_out: int
    mid: int
    kernel: int
    stride: int
    se: int  # squeezed channels, 0 without squeeze-and-excitation
    size_in: int
    size_out: int

    @property
    def expands(self) -> bool:
        return self.mid != self.c_in


class ConvNetSpec(BaseModel):
    """Resolved EfficientNet: stem, blocks, head and classifier at ``image_size`` x ``image_size``."""

    model_config = ConfigDict(frozen=True)

    image_size: int
    channels: int
    stem: int
    head: int
    classes: int
    blocks: list[Block]

    @classmethod
    def from_config(cls, config: dict[str, object], source: str = "config.json") -> ConvNetSpec:
        def num(key: str, default: float) -> float:
            v = config.get(key, default)
            if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
                raise PlanError(f"{source}: {key} must be a non-negative number, got {v!r}")
            return float(v)

        def ints(key: str) -> list[int]:
            v = config.get(key, _B0[key])
            if not isinstance(v, list | tuple) or not all(isinstance(i, int) and i > 0 for i in v):
                raise PlanError(f"{source}: {key} must be a list of positive integers, got {v!r}")
            return list(v)

        width = num("width_coefficient", 1.0)
        depth = num("depth_coefficient", 1.0)
        divisor = int(num("depth_divisor", 8)) or 8
        se_ratio = num("squeeze_expansion_ratio", 0.25)
        fixed = config.get("fix_stem_head") is True
        image = config.get("image_size", 224)
        if isinstance(image, list | tuple) and image:
            image = image[0]
        if not isinstance(image, int) or image < 1:
            raise PlanError(f"{source}: image_size must be a positive integer, got {image!r}")
        labels = config.get("id2label")
        classes = len(labels) if isinstance(labels, dict) and labels else None
        classes = classes or int(num("num_labels", 0)) or int(num("num_classes", 1000))
        stages = [ints(k) for k in _B0]
        if len({len(s) for s in stages}) != 1:
            raise PlanError(f"{source}: {', '.join(_B0)} must all have one entry per stage")

        def filters(c: int, skip: bool = False) -> int:
            if skip or not width:
                return c
            scaled = c * width
            out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
            return out + divisor if out < 0.9 * scaled else out

        n_stages = len(stages[0])
        stem = filters(STEM_CHANNELS, fixed)
        size = math.ceil(image / 2)
        blocks: list[Block] = []
        for i, (k, c_in, c_out, stride, reps, expand) in enumerate(zip(*stages, strict=True)):
            edge = i in (0, n_stages - 1)
            repeats = reps if fixed and edge else int(math.ceil(depth * reps))
            c_in = STEM_CHANNELS if fixed and i == 0 else filters(c_in)
            c_out = filters(c_out)
            for r in range(repeats):
                s = stride if r == 0 else 1
                cin = c_in if r == 0 else c_out
                out_size = math.ceil(size / s)
                se = max(1, int(cin * se_ratio)) if 0 < se_ratio <= 1 else 0
                blocks.append(
                    Block(
                        c_in=cin,
                        c_out=c_out,
                        mid=cin * expand,
                        kernel=k,
                        stride=s,
                        se=se,
                        size_in=size,
                        size_out=out_size,
                    )
                )
                size = out_size
        return cls(
            image_size=image,
            channels=int(num("num_channels", 3)) or 3,
            stem=stem,
            head=filters(HEAD_CHANNELS, fixed),
            classes=classes,
            blocks=blocks,
        )

    def parameter_groups(self) -> list[tuple[str, int, bool, str]]:
        """(name, parameters, quantizable, how) per group, exact."""
        b = self.blocks
        expand = sum(x.c_in * x.mid for x in b if x.expands)
        dw = sum(x.mid * x.kernel**2 for x in b)
        project = sum(x.mid * x.c_out for x in b)
        se = sum(2 * x.mid * x.se + x.se + x.mid for x in b if x.se)
        bn = 2 * (self.stem + self.head + sum((x.mid if x.expands else 0) + x.mid + x.c_out for x in b))
        groups = [
            ("stem", self.channels * 9 * self.stem, True, f"3x3 conv {self.channels} -> {self.stem}"),
            ("expand", expand, True, f"1x1 convs of {sum(x.expands for x in b)} blocks"),
            ("depthwise", dw, True, f"k x k depthwise convs of {len(b)} blocks"),
            ("project", project, True, f"1x1 convs of {len(b)} blocks"),
        ]
        if se:
            groups.append(("squeeze-excite", se, True, "1x1 reduce + expand, with biases"))
        groups += [
            ("head", b[-1].c_out * self.head, True, f"1x1 conv {b[-1].c_out} -> {self.head}"),
            ("norms", bn, False, f"{2 * len(b) + 2 + sum(x.expands for x in b)} BatchNorms (gamma, beta)"),
            (
                "classifier",
                self.head * self.classes + self.classes,
                False,
                f"{self.head} x {self.classes} + bias",
            ),
        ]
        return groups

    def _sizes(self, image: int) -> list[tuple[Block, int, int]]:
        """Blocks with their input and output sides for an ``image`` x ``image`` input."""
        out: list[tuple[Block, int, int]] = []
        size = math.ceil(image / 2)
        for blk in self.blocks:
            nxt = math.ceil(size / blk.stride)
            out.append((blk, size, nxt))
            size = nxt
        return out

    def flops_per_image(self, image: int | None = None) -> float:
        """Multiply-adds x 2 of one image (convolutions and classifier; BN, activations and pooling not
        counted)."""
        image = image or self.image_size
        s0 = math.ceil(image / 2)
        macs = float(self.channels * 9 * self.stem * s0 * s0)
        last = s0
        for blk, a, b in self._sizes(image):
            if blk.expands:
                macs += blk.c_in * blk.mid * a * a
            macs += blk.mid * blk.kernel**2 * b * b
            macs += 2 * blk.mid * blk.se
            macs += blk.mid * blk.c_out * b * b
            last = b
        macs += self.blocks[-1].c_out * self.head * last * last + self.head * self.classes
        return 2 * macs

    def live_sets(self, image: int | None = None, onednn: bool = True) -> list[tuple[str, int]]:
        """(where, elements alive at once) of one image, operator by operator (see the module docstring).

        ``onednn``: CPU convolutions (blocked reorder copies of input and output); False: GPU (cuDNN)."""
        image = image or self.image_size

        def conv(x: int, y: int, c_in: int) -> int:
            if not onednn:
                return y
            x_blocked = x if c_in >= ONEDNN_BLOCK else 0
            return y + max(x_blocked, y)

        s0 = math.ceil(image / 2)
        x_img = self.channels * image * image
        pad0 = _same_pad(image, 3, 2)
        padded0 = self.channels * (image + pad0) ** 2
        stem = self.stem * s0 * s0
        out = [
            ("stem conv", x_img + padded0 + conv(padded0, stem, self.channels)),
            ("stem BN/ReLU6", x_img + 2 * stem),
        ]
        for i, (blk, a, b) in enumerate(self._sizes(image)):
            name = f"block {i} ({blk.c_in}->{blk.mid}->{blk.c_out}, {a}x{a})"
            i_in = blk.c_in * a * a
            m = blk.mid * a * a
            padded = blk.mid * (a + _same_pad(a, blk.kernel, blk.stride)) ** 2
            d = blk.mid * b * b
            o = blk.c_out * b * b
            held = x_img + i_in
            if blk.expands:
                out.append((f"{name} expand conv", held + m + conv(i_in, m, blk.c_in)))
                out.append((f"{name} expand BN/ReLU6", held + 2 * m))
                mid_held = held + m
            else:
                mid_held = held  # the block's input is the depthwise conv's input
            out.append((f"{name} pad", mid_held + padded))
            out.append((f"{name} depthwise conv", mid_held + padded + conv(padded, d, blk.mid)))
            out.append((f"{name} depthwise BN/ReLU6", held + 2 * d))
            out.append((f"{name} project conv", held + d + conv(d, o, blk.mid)))
            out.append((f"{name} project BN/add", held + 2 * o))
        last = self._sizes(image)[-1][2]
        body = self.blocks[-1].c_out * last * last
        head = self.head * last * last
        out.append(("head conv", x_img + body + conv(body, head, self.blocks[-1].c_out)))
        out.append(("head BN/ReLU6", x_img + 2 * head))
        return out

    def feature_maps(self, image: int | None = None) -> list[int]:
        """Elements of every feature map one image's forward pass allocates (input, padded copies, stem,
        and each block's input, expanded map, padded copy, depthwise output and output; the head)."""
        image = image or self.image_size
        s0 = math.ceil(image / 2)
        sizes = [
            self.channels * image * image,
            self.channels * (image + _same_pad(image, 3, 2)) ** 2,
            self.stem * s0 * s0,
        ]
        for blk, a, b in self._sizes(image):
            pad = _same_pad(a, blk.kernel, blk.stride)
            sizes += [blk.c_in * a * a, blk.mid * a * a, blk.mid * (a + pad) ** 2, blk.mid * b * b]
            sizes.append(blk.c_out * b * b)
        last = self._sizes(image)[-1][2]
        sizes.append(self.head * last * last)
        return sizes

    def activation_elements(self, image: int | None = None, onednn: bool = True) -> tuple[int, str]:
        """Largest live set of one image's forward pass, in elements, and where it is."""
        where, best = max(self.live_sets(image, onednn), key=lambda w: w[1])
        kernels = "oneDNN blocked copies" if onednn else "plain NCHW convolutions"
        return best, f"largest live set at {where}, input image included, {kernels}"


def _same_pad(size: int, kernel: int, stride: int) -> int:
    """Total padding of TensorFlow-style "same" convolution on one side length (what the model pads)."""
    out = math.ceil(size / stride)
    return max((out - 1) * stride + kernel - size, 0)
