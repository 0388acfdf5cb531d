"""The models a worker holds: a LoadedModel on one device (memory mode and GPU levers applied), or a
sequence-parallel RenderGroup (N rank processes) in its place; one resident at a time."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from vace.pipelines.acceleration.levers import apply_gpu_levers
from vace.pipelines.engine.group import GroupRenderer, GroupSpec, RenderGroup
from vace.pipelines.engine.loading import load_pipeline
from vace.pipelines.engine.loras import LoraConfig
from vace.pipelines.engine.render import Renderer
from vace.pipelines.media.fetch import FetchPolicy
from vace.server.worker.config import WorkerConfig
from vace.weights.catalog import HelperDirs


def load_served_model(path: str, name: str, config: WorkerConfig, work_dir: Path) -> Any:
    """A LoadedModel on config.device (memory mode and GPU levers applied), or a started and ready
    RenderGroup when config.devices is a group."""
    if len(config.devices) > 1:
        group = RenderGroup(GroupSpec(path, tuple(config.devices), config.settings.sp_mode, name), work_dir=work_dir)
        group.wait_ready()
        return group

    s = config.settings
    model = load_pipeline(path, device=config.device, name=name, offload=s.offload)
    apply_gpu_levers(model, attention=s.attention, compile_blocks=s.compile, fp8=s.fp8)
    return model


def release(model: Any) -> None:
    """Stop a RenderGroup's ranks (a LoadedModel is simply dropped)."""
    if isinstance(model, RenderGroup):
        model.stop()


def renderer_for(model: Any, work_dir: Path, fetch_policy: FetchPolicy, loras: LoraConfig | None = None,
                 helpers: HelperDirs | None = None, annotators_dir: Path | None = None) -> Any:
    """Renderer or GroupRenderer: the same prepare / render interface for JobRunner."""
    if isinstance(model, RenderGroup):
        return GroupRenderer(model, work_dir=work_dir, fetch_policy=fetch_policy, loras=loras, helpers=helpers,
                             annotators_dir=annotators_dir)
    return Renderer(model, work_dir=work_dir, fetch_policy=fetch_policy, loras=loras, helpers=helpers,
                    annotators_dir=annotators_dir)




class ModelPool:
    """Loads served models on demand; keeps one resident at a time (one GPU)."""

    def __init__(self, config: WorkerConfig, work_dir: Path | None = None):
        self.paths = config.models
        self.config = config
        self.work_dir = work_dir or Path("vace-group")
        self.loaded: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        """A LoadedModel, or a ready RenderGroup when this worker is a sequence-parallel group."""
        if name not in self.loaded:
            if name not in self.paths:
                raise KeyError(f"model {name!r} is not served here")
            for model in self.loaded.values():
                release(model)
            self.loaded.clear()
            _free_accelerator_memory()
            self.loaded[name] = load_served_model(self.paths[name], name, self.config, self.work_dir)
        return self.loaded[name]


def _free_accelerator_memory() -> None:
    gc.collect()
    try:
        import torch  # torch loads only where tensors are used (the API process never needs it)

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
