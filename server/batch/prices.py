"""What a video would cost on the hosted service it replaces, and what our GPU time costs.

Hosted prices are fal's, per second of output video (counted at 16 fps), by resolution tier
(../shared/specs/hosted-apis.md): fal-ai/wan-vace-14b $0.04 / $0.06 / $0.08 at 480p / 580p / 720p,
fal-ai/wan-22-vace-fun-a14b $0.05 / $0.075 / $0.10.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

# USD per GPU-hour when --gpu-hour-price is not given: the middle of the on-demand list prices for one
# H100 SXM 80GB at GPU clouds in 2026 (about $2.49-$3.99). Pass your own rate (or your amortised cost).
DEFAULT_GPU_HOUR_PRICE = 3.00
HOSTED_FPS = 16
# Tier name -> the short side (pixels) fal renders it at (resolution 580p is 576 pixels).
TIERS = (("480p", 480), ("580p", 576), ("720p", 720))
WAN_VACE_14B = "fal-ai/wan-vace-14b"
WAN_22_VACE_FUN_A14B = "fal-ai/wan-22-vace-fun-a14b"
HOSTED_PRICES: dict[str, dict[str, Decimal]] = {
    WAN_VACE_14B: {"480p": Decimal("0.04"), "580p": Decimal("0.06"), "720p": Decimal("0.08")},
    WAN_22_VACE_FUN_A14B: {"480p": Decimal("0.05"), "580p": Decimal("0.075"), "720p": Decimal("0.10")},
}


@dataclass(frozen=True)
class HostedQuote:
    endpoint: str
    tier: str | None  # None: larger than the largest tier the service sells
    video_seconds: float
    usd: float | None
    note: str = ""


def hosted_endpoint(two_experts: bool) -> str:
    """The hosted endpoint a model stands in for: the Wan2.2 two-expert model is wan-22-vace-fun-a14b."""
    return WAN_22_VACE_FUN_A14B if two_experts else WAN_VACE_14B


def hosted_quote(endpoint: str, width: int, height: int, num_frames: int) -> HostedQuote:
    """The hosted price of one video: frames / 16 fps seconds at the price of the smallest tier that holds its
    short side (a video below 480p is priced as 480p, the cheapest tier sold)."""
    prices = HOSTED_PRICES[endpoint]
    seconds = Decimal(num_frames) / HOSTED_FPS
    short = min(width, height)
    for tier, side in TIERS:
        if short <= side:
            note = f"{short}p is below the smallest priced tier" if short < TIERS[0][1] else ""
            return HostedQuote(endpoint, tier, float(seconds), float(seconds * prices[tier]), note)
    return HostedQuote(endpoint, None, float(seconds), None, f"{short}p is above the largest tier ({TIERS[-1][0]})")


def gpu_cost(gpu_seconds: float, gpu_hour_price: float) -> float:
    return gpu_seconds / 3600.0 * gpu_hour_price
