"""WaveSpeed's v3 API for wavespeed-ai/wan-2.1-14b-vace: routes + schema."""
