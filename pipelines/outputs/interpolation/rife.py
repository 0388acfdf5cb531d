"""RIFE: the Practical-RIFE 4.2x IFNet (4.25 / 4.26 `flownet.pkl`), written from the published architecture.

IFNet estimates the flows from the wanted time t to both frames coarse-to-fine: a feature head encodes each
frame at full resolution; block 0 looks at both frames, their features and t at 1/16 of the size; each
following block looks at the frames and features warped by the current flow (at 1/8, 1/4, 1/2, 1) and adds
a flow correction. Every block also returns a fusion mask and 8 feature channels for the next one. The frame
at t is the two warped frames blended by the sigmoid of the last mask (`warp.synthesize`).

The widths are read from the checkpoint, so the published weights (head 16 -> 4 channels, blocks 192, 128,
96, 64, 32 wide with 8 residual convs each) and the tiny test weights load into the same classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vace.pipelines.outputs.interpolation.warp import backward_warp, pad_to_multiple, synthesize

BLOCK_OUTPUTS = 13  # 4 flow channels (t->0, t->1), 1 mask, 8 features, at twice the block's resolution


@dataclass(frozen=True)
class IFNetConfig:
    head_width: int = 16
    head_channels: int = 4  # feature channels per frame
    widths: tuple[int, ...] = (192, 128, 96, 64, 32)  # one IFBlock each, coarsest first
    depth: int = 8  # residual convs per block

    @property
    def scales(self) -> list[int]:
        """Downscale factor of each block: 16, 8, 4, 2, 1 for five blocks."""
        return [2 ** (len(self.widths) - 1 - i) for i in range(len(self.widths))]

    @property
    def pad_multiple(self) -> int:
        return max(64, 4 * self.scales[0])


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2, True))


class Head(nn.Module):
    """Per-frame feature encoder (full resolution in, full resolution out)."""

    def __init__(self, width: int, channels: int):
        super().__init__()
        self.cnn0 = nn.Conv2d(3, width, 3, 2, 1)
        self.cnn1 = nn.Conv2d(width, width, 3, 1, 1)
        self.cnn2 = nn.Conv2d(width, width, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(width, channels, 4, 2, 1)
        self.act = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.cnn0(x))
        x = self.act(self.cnn1(x))
        x = self.act(self.cnn2(x))
        return self.cnn3(x)


class ResConv(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, width, 1, 1))
        self.act = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x) * self.beta + x)


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class IFBlock(nn.Module):
    """One pyramid level: (inputs, current flow) at 1/scale -> (flow, mask, features) at full size."""

    def __init__(self, in_channels: int, width: int, depth: int):
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_channels, width // 2, 2), _conv(width // 2, width, 2))
        self.convblock = nn.Sequential(*[ResConv(width) for _ in range(depth)])
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(width, 4 * BLOCK_OUTPUTS, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None, scale: int) -> tuple[torch.Tensor, ...]:
        x = _resize(x, 1.0 / scale)
        if flow is not None:
            x = torch.cat([x, _resize(flow, 1.0 / scale) / scale], 1)
        out = _resize(self.lastconv(self.convblock(self.conv0(x))), float(scale))
        return out[:, :4] * scale, out[:, 4:5], out[:, 5:]


class IFNet(nn.Module):
    """Intermediate-flow network; parameter names match Practical-RIFE's flownet.pkl (minus `module.`)."""

    def __init__(self, config: IFNetConfig = IFNetConfig()):
        super().__init__()
        self.config = config
        c = config.head_channels
        self.encode = Head(config.head_width, c)
        for i, width in enumerate(config.widths):
            inputs = 7 + 2 * c if i == 0 else 8 + 4 + 2 * c + (BLOCK_OUTPUTS - 5)
            self.add_module(f"block{i}", IFBlock(inputs, width, config.depth))

    def blocks(self) -> list[IFBlock]:
        return [getattr(self, f"block{i}") for i in range(len(self.config.widths))]

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, timestep: torch.Tensor,
                feat0: torch.Tensor, feat1: torch.Tensor) -> torch.Tensor:
        """The frame at `timestep` ((B, 1, H, W)); sides must be multiples of config.pad_multiple."""
        flow = mask = feat = None
        warped0, warped1 = img0, img1
        for block, scale in zip(self.blocks(), self.config.scales, strict=True):
            if flow is None:
                flow, mask, feat = block(torch.cat([img0, img1, feat0, feat1, timestep], 1), None, scale)
            else:
                wf0, wf1 = backward_warp(feat0, flow[:, :2]), backward_warp(feat1, flow[:, 2:4])
                delta, mask, feat = block(torch.cat([warped0, warped1, wf0, wf1, timestep, mask, feat], 1),
                                          flow, scale)
                flow = flow + delta
            warped0, warped1 = backward_warp(img0, flow[:, :2]), backward_warp(img1, flow[:, 2:4])
        return synthesize(img0, img1, flow[:, :2], flow[:, 2:4], torch.sigmoid(mask))


_BLOCK = re.compile(r"^block(\d+)\.conv0\.1\.0\.weight$")
_RES = re.compile(r"^block0\.convblock\.(\d+)\.conv\.weight$")


def config_from_state_dict(state: dict[str, torch.Tensor]) -> IFNetConfig:
    """The IFNet shape a checkpoint was trained with (raises KeyError naming a missing tensor)."""
    widths = {int(m.group(1)): state[k].shape[0] for k in state if (m := _BLOCK.match(k))}
    if not widths:
        raise KeyError("block0.conv0.1.0.weight")
    depth = 1 + max((int(m.group(1)) for k in state if (m := _RES.match(k))), default=-1)
    return IFNetConfig(head_width=state["encode.cnn0.weight"].shape[0],
                       head_channels=state["encode.cnn3.weight"].shape[1],
                       widths=tuple(widths[i] for i in range(len(widths))), depth=depth)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """flownet.pkl's tensors, without the `module.` prefix of Practical-RIFE's DDP checkpoints."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in state.items()}


class RifeInterpolator:
    """Frames at any times between two frames, each computed directly (RIFE 4.x takes t as an input)."""

    name = "rife"

    def __init__(self, path: str | Path, device: str = "cpu"):
        path = Path(path)
        state = load_state(path)
        try:
            config = config_from_state_dict(state)
        except KeyError as exc:
            raise ValueError(f"{path} is not a Practical-RIFE 4.2x flownet.pkl (no {exc})") from None
        self.net = IFNet(config)
        wanted = self.net.state_dict()
        self.net.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
        self.net.eval().to(device)
        self.device = device
        self.path = path

    @torch.inference_mode()
    def between(self, image0: torch.Tensor, image1: torch.Tensor, times: list[float]) -> list[torch.Tensor]:
        """(1, 3, H, W) frames in [0, 1] -> the frames at each time in `times` (0 < t < 1)."""
        height, width = image0.shape[2:]
        multiple = self.net.config.pad_multiple
        img0, img1 = pad_to_multiple(image0, multiple), pad_to_multiple(image1, multiple)
        feat0, feat1 = self.net.encode(img0), self.net.encode(img1)
        out = []
        for t in times:
            timestep = torch.full_like(img0[:, :1], float(t))
            out.append(self.net(img0, img1, timestep, feat0, feat1)[:, :, :height, :width].clamp(0, 1))
        return out
