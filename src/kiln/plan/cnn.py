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
explicit "same" padding: in a block, its input (kept for the residual), the expanded activation, its padded
copy, and the depthwise output. It is an estimate and says so.
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

    def activation_elements(self, image: int | None = None) -> tuple[int, str]:
        """Largest live set of one image's forward pass, in elements, and how it was found."""
        image = image or self.image_size
        s0 = math.ceil(image / 2)
        inp = self.channels * image * image
        # stem: the input's padded copy, the conv output and the BN output (the input is added below)
        best = self.channels * (image + 1) ** 2 + 2 * self.stem * s0 * s0
        where = "stem"
        for i, (blk, a, b) in enumerate(self._sizes(image)):
            pad = (blk.kernel - 1) if blk.stride == 1 else max(blk.kernel - blk.stride, 0)
            act = blk.mid * a * a
            padded = blk.mid * (a + pad) ** 2
            live = act + padded + blk.mid * b * b
            if blk.expands:
                live += blk.c_in * a * a
            if live > best:
                best, where = live, f"block {i} ({blk.c_in}->{blk.mid}->{blk.c_out}, {a}x{a})"
        head = self.blocks[-1].c_out
        last = self._sizes(image)[-1][2]
        head_live = head * last * last + 2 * self.head * last * last
        if head_live > best:
            best, where = head_live, "head"
        return inp + best, f"input + largest live set at {where}"
