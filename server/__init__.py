"""The HTTP server: dialects (api/), the prediction service, the store and the GPU workers."""
