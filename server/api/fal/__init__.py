"""fal's queue API for fal-ai/wan-vace-14b and fal-ai/wan-22-vace-fun-a14b: routes + schema."""
