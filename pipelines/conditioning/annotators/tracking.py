"""Mask tracking: a first-frame mask propagated through the video with SAM 2 video tracking (transformers).

Preprocessing follows Sam2VideoProcessor (square resize to the model's image size, ImageNet normalisation)
without its torchvision-only fast processors, so it runs wherever torch and transformers do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vace.pipelines.conditioning.annotators.base import ProgressFn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Sam2Tracker:
    name = "sam2"

    def __init__(self, folder: Path, device: str = "cpu"):
        import transformers  # transformers loads only where a model is built
        from transformers import Sam2VideoModel  # transformers loads only where a model is built

        transformers.utils.logging.disable_progress_bar()
        self.device = device
        self.model = Sam2VideoModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
        self.size = int(self.model.config.image_size)

    def track(self, frames: np.ndarray, first_mask: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        """frames (F, H, W, 3) in [0, 1], first_mask (H, W) 1 = object -> masks (F, H, W) of 0/1."""
        import torch  # torch loads only where tensors are used (the API process never needs it)
        import torch.nn.functional as F  # torch loads only where tensors are used (the API process never needs it)
        from transformers import Sam2VideoInferenceSession  # transformers loads only where a model is built

        n, h, w, _ = frames.shape
        video = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(0, 3, 1, 2)
        video = F.interpolate(video, size=(self.size, self.size), mode="bilinear", align_corners=False)
        video = (video - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        session = Sam2VideoInferenceSession(video=video, video_height=h, video_width=w, inference_device=self.device,
                                            inference_state_device=self.device, video_storage_device="cpu",
                                            dtype=torch.float32)
        mask = torch.from_numpy((first_mask >= 0.5).astype(np.float32))[None, None]
        mask = F.interpolate(mask, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        session.add_mask_inputs(session.obj_id_to_idx(1), 0, (mask >= 0.5).float().to(self.device))
        session.obj_with_new_inputs = [1]
        out = np.zeros((n, h, w), dtype=np.float32)
        with torch.inference_mode():
            self.model(inference_session=session, frame_idx=0)
            for done, result in enumerate(self.model.propagate_in_video_iterator(session, start_frame_idx=0), 1):
                logits = F.interpolate(result.pred_masks[:1].float(), size=(h, w), mode="bilinear",
                                       align_corners=False)
                out[result.frame_idx] = (logits[0, 0] > 0).cpu().numpy()
                if progress:
                    progress(done, n)
        # The annotated frame keeps the user's mask exactly.
        out[0] = (first_mask >= 0.5).astype(np.float32)
        return out
