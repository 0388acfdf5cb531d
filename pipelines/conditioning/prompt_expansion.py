"""Prompt expansion: a local instruction-tuned LLM rewrites a short prompt into a detailed video description.

A Qwen2.5-Instruct folder (Qwen2ForCausalLM, any size) rewrites text; a Qwen2.5-VL folder
(Qwen2_5_VLForConditionalGeneration) also looks at the request's images (reference images, first / last
frame). Both load from local files only, run on the worker's device and leave the GPU after each use (the
model waits in CPU memory for the next request). Sampling is seeded with the request's seed, so the same
request gets the same rewrite.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vace.pipelines.conditioning.primitives import TaskInputs
from vace.pipelines.job.request import GenerationRequest
from vace.weights.catalog import PROMPT_EXTENDERS, HelperDirs

SYSTEM_PROMPT = (
    "You turn short video ideas into prompts for a text-to-video model. Rewrite the user's idea as one "
    "detailed paragraph of 60 to 120 words that describes what is seen: the main subject and its appearance, "
    "what it does and how it moves over the clip, the setting, the lighting and the mood, and how the camera "
    "frames and moves (static, pan, tilt, dolly, tracking, close-up, wide shot). Keep every element of the "
    "user's idea and invent nothing that contradicts it. If images are given, describe their content, style "
    "and composition so the video matches them. Write in the same language as the user's idea. Answer with "
    "the rewritten prompt only: no title, no list, no quotes, no explanations."
)
DEFAULT_MAX_NEW_TOKENS = 512
VL_MODEL_TYPES = ("qwen2_5_vl",)
IMAGE_TOKEN = "<|image_pad|>"


@dataclass
class Expansion:
    prompt: str  # the prompt the render uses
    expanded: bool  # False when the model answered nothing and the original was kept
    note: str = ""


def model_type(folder: Path) -> str:
    return str(json.loads((folder / "config.json").read_text()).get("model_type", ""))


def processor_chat_template(folder: Path) -> str | None:
    """A vision model's chat template (chat_template.json / .jinja, where Qwen2.5-VL keeps the one that places
    images); None = the tokenizer's own."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    return None


def messages(prompt: str, num_images: int) -> list[dict[str, Any]]:
    """The chat: our system prompt, then the user's prompt (after the images for a vision model)."""
    if num_images:
        content: Any = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]
    else:
        content = prompt
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


class PromptExtender:
    """A loaded extender; `expand()` moves it to `device` for one rewrite and back to the CPU."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        import torch  # torch loads only where tensors are used (the API process never needs it)
        import transformers  # transformers loads only where a model is built

        transformers.utils.logging.disable_progress_bar()
        self.folder = Path(folder)
        self.vision = (self.folder / "config.json").is_file() and model_type(self.folder) in VL_MODEL_TYPES
        entry = PROMPT_EXTENDERS["prompt-extender-vl" if self.vision else "prompt-extender"]
        if entry.missing(self.folder):
            raise FileNotFoundError(entry.describe_missing(self.folder))
        self.device = device
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        from transformers import AutoTokenizer  # transformers loads only where a model is built

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        self.chat_template = processor_chat_template(self.folder)
        if self.vision:
            # transformers loads only where a model is built
            from transformers import AutoImageProcessor, Qwen2_5_VLForConditionalGeneration

            # The image processor alone: AutoProcessor would also build the video processor (needs torchvision).
            self.image_processor = AutoImageProcessor.from_pretrained(str(self.folder), local_files_only=True)
            self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                str(self.folder), local_files_only=True, dtype=dtype)
        else:
            from transformers import AutoModelForCausalLM  # transformers loads only where a model is built

            self.model = AutoModelForCausalLM.from_pretrained(str(self.folder), local_files_only=True, dtype=dtype)
        self.model.eval()
        configured = getattr(self.model.generation_config, "max_new_tokens", None)
        self.max_new_tokens = int(configured or DEFAULT_MAX_NEW_TOKENS)

    def inputs(self, prompt: str, images: Sequence[Any]) -> dict[str, Any]:
        """Token ids (and pixel values for a vision model) of the chat, ready for generate()."""
        shown = list(images) if self.vision else []
        text = self.tokenizer.apply_chat_template(messages(prompt, len(shown)), chat_template=self.chat_template,
                                                  tokenize=False, add_generation_prompt=True)
        if not shown:
            return dict(self.tokenizer([text], return_tensors="pt"))
        vision = self.image_processor(images=shown, return_tensors="pt")
        # Each image's placeholder stands for one token per merged patch of its grid.
        merge = int(getattr(self.image_processor, "merge_size", 2))
        counts = [int(n) for n in vision["image_grid_thw"].prod(-1) // merge**2]
        parts = text.split(IMAGE_TOKEN)
        if len(parts) != len(counts) + 1:
            raise ValueError(f"the chat template of {self.folder} did not place {len(counts)} image(s)")
        text = parts[0] + "".join(IMAGE_TOKEN * n + part for n, part in zip(counts, parts[1:], strict=True))
        return {**self.tokenizer([text], return_tensors="pt"), **vision}

    def expand(self, prompt: str, images: Sequence[Any] = (), seed: int = 0) -> Expansion:
        import torch  # torch loads only where tensors are used (the API process never needs it)

        note = ""
        if images and not self.vision:
            note = f"{len(images)} image(s) not shown to the text-only prompt extender {self.folder.name}"
        inputs = self.inputs(prompt, images)
        self.model.to(self.device)
        try:
            inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
            with torch.inference_mode(), torch.random.fork_rng(devices=_cuda_devices(self.device)):
                torch.manual_seed(seed)
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                          pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
            text = clean(self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
        finally:
            self.model.to("cpu")
            _free_cuda(self.device)
        if not text:
            return Expansion(prompt, False, "the prompt extender answered nothing; the original prompt was kept")
        return Expansion(text, True, note)


def clean(text: str) -> str:
    """One line of printable text: control characters and undecodable bytes dropped, whitespace collapsed."""
    kept = "".join(" " if c.isspace() else c for c in text
                   if c.isspace() or (unicodedata.category(c) != "Cc" and c != "\ufffd"))
    return " ".join(kept.split())


def _cuda_devices(device: str) -> list[int]:
    if not device.startswith("cuda"):
        return []
    return [int(device.partition(":")[2] or 0)]


def _free_cuda(device: str) -> None:
    if device.startswith("cuda"):
        import torch  # torch loads only where tensors are used (the API process never needs it)

        torch.cuda.empty_cache()


_LOADED: dict[tuple[str, str], PromptExtender] = {}


def extender_for(folder: str | Path, device: str = "cpu") -> PromptExtender:
    """The extender in `folder`, loaded once per process and device."""
    key = (str(Path(folder).resolve()), device)
    if key not in _LOADED:
        _LOADED[key] = PromptExtender(folder, device)
    return _LOADED[key]


def request_images(inputs: TaskInputs) -> list[Any]:
    """The request's still images (reference images, first / last frame) as RGB PIL images."""
    images = [*inputs.reference_images, inputs.first_frame, inputs.last_frame]
    return [img.convert("RGB") for img in images if img is not None]


def expand_request(request: GenerationRequest, inputs: TaskInputs, helpers: HelperDirs,
                   model_dir: str | Path | None, device: str) -> tuple[GenerationRequest, dict[str, Any]]:
    """The request with its prompt rewritten by the extender for it (the vision one when it has images), and the
    metrics that say so."""
    images = request_images(inputs)
    _, folder = helpers.extender_for(bool(images), model_dir)
    result = extender_for(folder, device).expand(request.prompt, images, seed=request.seed)
    metrics: dict[str, Any] = {"original_prompt": request.prompt, "expanded_prompt": result.prompt,
                               "prompt_extender": folder.name}
    if result.note:
        metrics["prompt_expansion_note"] = result.note
    return dataclasses.replace(request, prompt=result.prompt), metrics
