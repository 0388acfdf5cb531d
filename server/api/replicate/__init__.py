"""Replicate's predictions API and model schemas (prunaai/vace-14b and our own vace/<model>): routes + schema."""
