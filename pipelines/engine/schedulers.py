"""Samplers (unipc, dpm++, euler) as diffusers flow-matching schedulers with a `shift`."""

from __future__ import annotations

import functools
from typing import Any

from vace.pipelines.job.request import SAMPLERS, RequestError


def make_scheduler(sampler: str, shift: float, num_train_timesteps: int = 1000) -> Any:
    # diffusers loads only where a model is built
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sampler == "unipc":
        return from_first_step(UniPCMultistepScheduler)(
            prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=num_train_timesteps,
            flow_shift=shift)
    if sampler == "dpm++":
        return from_first_step(DPMSolverMultistepScheduler)(
            prediction_type="flow_prediction", use_flow_sigmas=True, algorithm_type="dpmsolver++", solver_order=2,
            num_train_timesteps=num_train_timesteps, flow_shift=shift)
    if sampler == "euler":
        return from_first_step(FlowMatchEulerDiscreteScheduler)(num_train_timesteps=num_train_timesteps, shift=shift)
    raise RequestError("sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


@functools.cache
def from_first_step(scheduler: type) -> type:
    """`scheduler`, always starting the denoising loop at its first timestep.

    diffusers finds where a loop starts by looking the first timestep up among the schedule's (integer) timesteps,
    and takes the second match when it repeats. A high shift with many steps makes the first timesteps repeat
    (999, 999, ...: shift 16 at 80 steps, 30 at 50), so the loop started one step late and failed at its last step
    (UniPC: `assert self.this_order > 0`; DPM++: an index out of range). Every pipeline here starts at the first
    step, so the index is set, not looked up."""

    def set_timesteps(self: Any, *args: Any, **kwargs: Any) -> None:
        scheduler.set_timesteps(self, *args, **kwargs)
        self.set_begin_index(0)

    return type(scheduler.__name__, (scheduler,), {"set_timesteps": set_timesteps, "__doc__": scheduler.__doc__})
