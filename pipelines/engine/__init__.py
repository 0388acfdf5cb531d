"""The render engine: a Job's request -> denoised frames with WanVACEPipeline (loading, schedulers, prompt cache,
memory modes)."""
