"""GenerationRequest -> mp4: inputs, VACE conditioning, denoising with WanVACEPipeline, decode, write."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vace.pipelines.acceleration.levers import preset_applied
from vace.pipelines.acceleration.presets import apply_distill, resolve_preset
from vace.pipelines.conditioning import tasks
from vace.pipelines.conditioning.annotators import AnnotatorEnv
from vace.pipelines.conditioning.inputs import load_inputs
from vace.pipelines.conditioning.primitives import Conditioning
from vace.pipelines.conditioning.prompt_expansion import expand_request
from vace.pipelines.conditioning.temporal import TemporalPlan, downsampled, plan_for
from vace.pipelines.engine.latent_preview import LatentPreviewer, Preview
from vace.pipelines.engine.loras import ActiveLora, LoraConfig, adapters_for, resolve_loras
from vace.pipelines.engine.prompt_cache import prompt_cache_for
from vace.pipelines.engine.schedulers import make_scheduler
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.job.requirements import require_helpers
from vace.pipelines.media.codec import write_mp4
from vace.pipelines.media.fetch import FetchPolicy
from vace.weights.catalog import HelperDirs

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
PreviewFn = Callable[[Preview], None]


class RenderCancelled(Exception):
    """The render was cancelled between two denoising steps."""


@dataclass
class RenderResult:
    path: Path
    seed: int
    num_frames: int
    width: int
    height: int
    fps: float
    timings: dict[str, float]
    metrics: dict[str, Any] = field(default_factory=dict)
    frames: np.ndarray | None = None  # (F, H, W, 3) float in [0, 1], as written


@dataclass
class Prepared:
    """A validated request with its seed resolved and its conditioning built (no model work yet)."""

    request: GenerationRequest  # its prompt is the expanded one when expand_prompt was asked for
    conditioning: Conditioning
    load_seconds: float
    loras: list[ActiveLora] = field(default_factory=list)  # resolved to local files: every group rank reads them
    plan: TemporalPlan | None = None  # rendered / delivered frame counts (None: render what was asked)
    interpolator_dir: Path | None = None  # weights of request.interpolator when the plan interpolates
    device: str | None = None  # where the helper stages (prompt expansion, interpolation) run
    metrics: dict[str, Any] = field(default_factory=dict)  # what preparing decided (expanded prompt, ...)


def prepare_request(request: GenerationRequest, work_dir: Path, fetch_policy: FetchPolicy | None,
                    weights_path: Path | None, device: str | None, two_experts: bool,
                    loras: LoraConfig | None = None,
                    helpers: HelperDirs | None = None, annotators_dir: Path | None = None) -> Prepared:
    """Validate, resolve the seed, decode the inputs, plan the frames (temporal downsampling), expand the prompt
    and build the conditioning (annotators included) -- no transformer work. Annotator, interpolator and prompt
    extender weights live beside the model (<weights>/../annotators, ...) unless configured otherwise
    (`annotators_dir`, `helpers`); they run on `device`. Preset turbo becomes the distill recipe of `loras` (a
    pair where one is configured and the model has `two_experts`), and the request's LoRAs resolve to local files
    (URLs fetched). Raises RequestError on bad input or missing helper weights."""
    started = time.perf_counter()
    loras = loras or LoraConfig()
    helpers = helpers or HelperDirs()
    request = apply_distill(resolve_preset(request.validated()), loras.distill, two_experts).with_seed()
    require_helpers(request, helpers, weights_path)
    library = loras.library(fetch_policy, allow_paths=fetch_policy.allow_local_paths if fetch_policy else True)
    active = resolve_loras(request.loras, library)
    inputs = load_inputs(request, work_dir / "inputs", fetch_policy)
    plan = plan_for(inputs, request)
    inputs = downsampled(inputs, plan)
    interpolator_dir = helpers.interpolator_dir(request.interpolator, weights_path) if plan.between else None
    metrics: dict[str, Any] = {}
    env = AnnotatorEnv.for_model(weights_path, device, annotators_dir)
    if request.expand_prompt:
        request, metrics = expand_request(request, inputs, helpers, weights_path, env.resolved_device())
    cond = tasks.build(request.task, inputs, env)
    return Prepared(request, cond, time.perf_counter() - started, active, plan=plan,
                    interpolator_dir=interpolator_dir, device=device, metrics=metrics)


class Renderer:
    """Renders requests on one loaded model (weights.loader.LoadedModel)."""

    def __init__(self, model: Any, work_dir: str | Path | None = None, fetch_policy: FetchPolicy | None = None,
                 loras: LoraConfig | None = None, helpers: HelperDirs | None = None,
                 annotators_dir: Path | None = None):
        self.model = model
        self.pipe = model.pipeline
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="vace-render-"))
        self.fetch_policy = fetch_policy
        self.loras = loras or LoraConfig()
        self.helpers = helpers
        self.annotators_dir = annotators_dir
        self.prompt_cache = prompt_cache_for(self.pipe)

    def prepare(self, request: GenerationRequest) -> Prepared:
        """Validate, resolve the seed and build the conditioning; raises RequestError on bad input."""
        return prepare_request(request, self.work_dir, self.fetch_policy, self.model.path, self.model.device,
                               self.model.two_experts, self.loras, self.helpers, self.annotators_dir)

    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: float) -> tuple[Any, Any]:
        """Prompt embeddings through the model's LRU cache (the default negative prompt is encoded once)."""
        negative = self.prompt_cache.get(negative_prompt or "") if guidance > 1.0 else None
        return self.prompt_cache.get(prompt), negative

    @contextlib.contextmanager
    def denoise_context(self, request: GenerationRequest, metrics: dict[str, Any]) -> Iterator[None]:
        """The request's acceleration preset (step cache) around the denoising loop; fills `metrics`."""
        with preset_applied(self.model, request.preset, request.steps, request.guidance > 1.0, metrics):
            yield

    def pipeline_kwargs(self, prepared: Prepared) -> dict[str, Any]:
        """The conditioning and sampling arguments handed to WanVACEPipeline.__call__."""
        import torch  # torch loads only where tensors are used (the API process never needs it)

        req, cond = prepared.request, prepared.conditioning
        kwargs: dict[str, Any] = dict(
            video=[cond.video], mask=[np.repeat(cond.mask[..., None], 3, axis=-1)],
            reference_images=list(cond.reference_images) or None,
            conditioning_scale=req.conditioning_scale, height=req.height, width=req.width,
            num_frames=cond.num_frames, num_inference_steps=req.steps, guidance_scale=req.guidance,
            generator=torch.Generator(device="cpu").manual_seed(req.seed), output_type="latent",
        )
        if self.pipe.config.boundary_ratio is not None:
            kwargs["guidance_scale_2"] = req.guidance_2 if req.guidance_2 is not None else req.guidance
        return kwargs

    def render(self, request: GenerationRequest | Prepared, on_progress: ProgressFn | None = None,
               should_cancel: CancelFn | None = None, output_path: str | Path | None = None,
               on_preview: PreviewFn | None = None) -> RenderResult:
        """Render one request to an mp4; raises RequestError (bad input) or RenderCancelled. `on_preview` gets a
        live preview of the video every few steps (latent_preview)."""
        import torch  # torch loads only where tensors are used (the API process never needs it)

        prepared = request if isinstance(request, Prepared) else self.prepare(request)
        req, cond = prepared.request, prepared.conditioning
        timings = {"load_inputs": prepared.load_seconds}
        metrics: dict[str, Any] = dict(prepared.metrics)
        previewer = LatentPreviewer(self.pipe.vae.config.z_dim, req.steps, len(cond.reference_images)) \
            if on_preview else None

        def step_end(pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
            if on_progress:
                on_progress(i + 1, req.steps)
            if previewer and (preview := previewer(i + 1, kwargs["latents"], pipe.scheduler.sigmas)):
                on_preview(preview)
            if should_cancel and should_cancel():
                raise RenderCancelled(f"cancelled after step {i + 1}/{req.steps}")
            return {}

        if should_cancel and should_cancel():
            raise RenderCancelled("cancelled before denoising")
        started = time.perf_counter()
        with torch.inference_mode():
            prompt_embeds, negative_embeds = self.encode_prompt(req.prompt, req.negative_prompt, req.guidance)
        timings["encode_prompt"] = time.perf_counter() - started

        self.pipe.scheduler = make_scheduler(req.sampler, req.shift,
                                             self.pipe.scheduler.config.get("num_train_timesteps", 1000))
        started = time.perf_counter()
        adapters = adapters_for(self.model, self.loras.capacity)
        with adapters.applied(prepared.loras) as lora_records, self.denoise_context(req, metrics), \
                torch.inference_mode():
            latents = self.pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                                callback_on_step_end=step_end, **self.pipeline_kwargs(prepared)).frames
        timings["denoise"] = time.perf_counter() - started
        metrics.update(steps=req.steps, guidance=req.guidance, sampler=req.sampler, shift=req.shift)
        if lora_records:
            metrics["loras"] = lora_records

        started = time.perf_counter()
        frames = self.decode(latents, len(cond.reference_images))
        timings["decode"] = time.perf_counter() - started

        fps = cond.fps or req.fps
        path = Path(output_path) if output_path else self.work_dir / f"render-{req.seed}-{time.time_ns()}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        write_mp4(frames, path, fps)
        timings["write"] = time.perf_counter() - started
        n, h, w, _ = frames.shape
        return RenderResult(path=path, seed=req.seed, num_frames=n, width=w, height=h, fps=fps, timings=timings,
                            metrics=metrics, frames=frames)

    def decode(self, latents: Any, num_reference_images: int) -> np.ndarray:
        """Drop the reference latent frames, un-normalise, VAE-decode -> (F, H, W, 3) float in [0, 1]."""
        import torch  # torch loads only where tensors are used (the API process never needs it)

        vae = self.pipe.vae
        with torch.inference_mode():
            latents = latents[:, :, num_reference_images:].to(vae.dtype)
            mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
            std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
            video = vae.decode(latents * std + mean, return_dict=False)[0]
            frames = self.pipe.video_processor.postprocess_video(video, output_type="np")
        return np.asarray(frames[0], dtype=np.float32)
