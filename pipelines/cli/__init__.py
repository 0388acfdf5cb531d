"""Commands that need no server: `vace generate` and `vace weights`."""
