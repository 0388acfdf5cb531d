"""API dialects. Each module listed in DIALECTS defines `install(app)`: routes, error bodies, webhooks."""

DIALECTS = ("server.api.replicate", "server.api.fal", "server.api.wavespeed")
