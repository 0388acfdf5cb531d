"""Samplers (unipc, dpm++, euler) as diffusers flow-matching schedulers with a `shift`."""

from __future__ import annotations

from typing import Any

from vace.pipelines.job.request import SAMPLERS, RequestError


def make_scheduler(sampler: str, shift: float, num_train_timesteps: int = 1000) -> Any:
    # diffusers loads only where a model is built
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sampler == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       num_train_timesteps=num_train_timesteps, flow_shift=shift)
    if sampler == "dpm++":
        return DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                           algorithm_type="dpmsolver++", solver_order=2,
                                           num_train_timesteps=num_train_timesteps, flow_shift=shift)
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    raise RequestError("sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
