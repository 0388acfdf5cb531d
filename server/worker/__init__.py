"""GPU workers: the job runner, the model pool, device planning and the supervisor that keeps workers alive."""
