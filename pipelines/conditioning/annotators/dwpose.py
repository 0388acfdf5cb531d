"""Pose / face control frames: DWPose (YOLOX person detector + RTMPose whole-body, ONNX via onnxruntime),
drawn as VACE's PoseBodyFaceAnnotator draws them: OpenPose-18 body limbs and joints plus the 68 face points,
no hands, on black, with the official RGB/BGR swap (the drawing's colour list lands channel-reversed)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import warnings
from pathlib import Path

import numpy as np

from vace.pipelines.conditioning.annotators.base import ProgressFn, from_uint8, to_uint8

DETECTOR_FILE, POSE_FILE = "yolox_l.onnx", "dw-ll_ucoco_384.onnx"
NUM_KEYPOINTS = 133
SCORE_VISIBLE = 0.3
LIMBS = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13], [13, 14],
         [2, 1], [1, 15], [15, 17], [1, 16], [16, 18], [3, 17], [6, 18]]
COLORS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
          [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
          [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]


# --- detector (YOLOX) -------------------------------------------------------------------------------

def _nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        order = order[np.where(inter / (areas[i] + areas[order[1:]] - inter) <= thr)[0] + 1]
    return keep


def detect_people(session, image: np.ndarray) -> np.ndarray:
    """Person boxes (x1, y1, x2, y2) in image pixels: letterbox to the detector size, decode the YOLOX grid,
    NMS 0.45 on scores > 0.1, keep class 0 with score > 0.3."""
    import cv2  # OpenCV loads only where an annotator or decoder needs it

    shape = session.get_inputs()[0].shape[2:]
    size = tuple(int(s) if isinstance(s, int) else 640 for s in shape)
    ratio = min(size[0] / image.shape[0], size[1] / image.shape[1])
    nh, nw = int(image.shape[0] * ratio), int(image.shape[1] * ratio)
    padded = np.full((*size, 3), 114, dtype=np.uint8)
    padded[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    blob = np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32)[None]
    pred = session.run(None, {session.get_inputs()[0].name: blob})[0][0].astype(np.float64)
    grids, strides = [], []
    for stride in (8, 16, 32):
        hs, ws = size[0] // stride, size[1] // stride
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((hs * ws, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    centre = (pred[:, :2] + grid) * stride
    wh = np.exp(pred[:, 2:4]) * stride
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1) / ratio
    scores = pred[:, 4:5] * pred[:, 5:]
    person = scores[:, 0]
    valid = person > 0.1
    if not valid.any():
        return np.zeros((0, 4))
    boxes, person = boxes[valid], person[valid]
    keep = [i for i in _nms(boxes, person, 0.45) if person[i] > SCORE_VISIBLE]
    # Multiclass NMS keeps a box for every class; only class-0 (person) boxes are used afterwards.
    return boxes[keep]


# --- keypoints (RTMPose, SimCC) ---------------------------------------------------------------------

def _warp_matrix(center: np.ndarray, scale: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    import cv2  # OpenCV loads only where an annotator or decoder needs it

    def third(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = a - b
        return b + np.r_[-d[1], d[0]]

    src = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + np.array([0.0, scale[0] * -0.5])
    src[2] = third(src[0], src[1])
    dst = np.zeros((3, 2), np.float32)
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = dst[0] + np.array([0.0, out_w * -0.5])
    dst[2] = third(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


def estimate_keypoints(session, boxes: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, 133, 2) keypoints in image pixels and (P, 133) scores; no box = the whole image as one box."""
    import cv2  # OpenCV loads only where an annotator or decoder needs it

    in_h, in_w = (int(s) for s in session.get_inputs()[0].shape[2:])
    if len(boxes) == 0:
        boxes = np.array([[0, 0, image.shape[1], image.shape[0]]], dtype=np.float64)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    all_kp, all_sc = [], []
    for box in boxes:
        center = (box[:2] + box[2:]) * 0.5
        scale = (box[2:] - box[:2]) * 1.25
        aspect = in_w / in_h
        scale = np.array([scale[0], scale[0] / aspect] if scale[0] > scale[1] * aspect
                         else [scale[1] * aspect, scale[1]])
        crop = cv2.warpAffine(image, _warp_matrix(center, scale, in_w, in_h), (in_w, in_h), flags=cv2.INTER_LINEAR)
        blob = ((crop - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
        simcc_x, simcc_y = session.run(None, {session.get_inputs()[0].name: blob})[:2]
        x_locs, y_locs = simcc_x[0].argmax(-1), simcc_y[0].argmax(-1)
        scores = np.minimum(simcc_x[0].max(-1), simcc_y[0].max(-1))
        locs = np.stack([x_locs, y_locs], -1).astype(np.float64)
        locs[scores <= 0] = -1
        keypoints = locs / 2.0 / np.array([in_w, in_h]) * scale + center - scale / 2
        all_kp.append(keypoints)
        all_sc.append(scores)
    return np.stack(all_kp), np.stack(all_sc)


def to_openpose(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-WholeBody 133 -> 134 points with OpenPose body order (neck inserted at 17, then reindexed)."""
    info = np.concatenate([keypoints, scores[..., None]], axis=-1)
    neck = info[:, [5, 6]].mean(axis=1)
    neck[:, 2:4] = np.logical_and(info[:, 5, 2:4] > SCORE_VISIBLE, info[:, 6, 2:4] > SCORE_VISIBLE).astype(int)
    info = np.insert(info, 17, neck, axis=1)
    mmpose_idx = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
    openpose_idx = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]
    info[:, openpose_idx] = info[:, mmpose_idx]
    return info[..., :2], info[..., 2]


# --- drawing ---------------------------------------------------------------------------------------

def draw_body(canvas: np.ndarray, candidate: np.ndarray, subset: np.ndarray) -> np.ndarray:
    import cv2  # OpenCV loads only where an annotator or decoder needs it

    h, w = canvas.shape[:2]
    for i in range(17):
        for person in subset:
            index = person[np.array(LIMBS[i]) - 1]
            if -1 in index:
                continue
            ys = candidate[index.astype(int), 0] * float(w)
            xs = candidate[index.astype(int), 1] * float(h)
            length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(xs[0] - xs[1], ys[0] - ys[1]))
            polygon = cv2.ellipse2Poly((int(np.mean(ys)), int(np.mean(xs))), (int(length / 2), 4), int(angle), 0,
                                       360, 1)
            cv2.fillConvexPoly(canvas, polygon, COLORS[i])
    canvas = (canvas * 0.6).astype(np.uint8)
    for i in range(18):
        for person in subset:
            index = int(person[i])
            if index == -1:
                continue
            x, y = candidate[index][0:2]
            cv2.circle(canvas, (int(x * w), int(y * h)), 4, COLORS[i], thickness=-1)
    return canvas


def draw_face(canvas: np.ndarray, faces: np.ndarray) -> np.ndarray:
    import cv2  # OpenCV loads only where an annotator or decoder needs it

    h, w = canvas.shape[:2]
    for face in faces:
        for x, y in face:
            x, y = int(x * w), int(y * h)
            if x > 0.01 and y > 0.01:
                cv2.circle(canvas, (x, y), 3, (255, 255, 255), thickness=-1)
    return canvas


def draw_pose(keypoints: np.ndarray, scores: np.ndarray, height: int, width: int, body: bool,
              face: bool) -> np.ndarray:
    """keypoints (P, 134, 2) normalised to [0, 1], OpenPose order -> uint8 canvas in drawing order (not swapped)."""
    keypoints = keypoints.copy()
    persons = len(keypoints)
    candidate = keypoints[:, :18].reshape(persons * 18, 2)
    subset = np.where(scores[:, :18] > SCORE_VISIBLE, np.arange(persons * 18).reshape(persons, 18), -1)
    keypoints[scores < SCORE_VISIBLE] = -1
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    if body:
        canvas = draw_body(canvas, candidate, subset.astype(np.float64))
    if face:
        canvas = draw_face(canvas, keypoints[:, 24:92])
    return canvas


def resize_for_pose(image: np.ndarray, resolution: int) -> np.ndarray:
    """Shorter side to `resolution`, both sides rounded to multiples of 64 (DWPose resize_image)."""
    import cv2  # OpenCV loads only where an annotator or decoder needs it

    h, w = image.shape[:2]
    k = float(resolution) / min(h, w)
    nh, nw = int(np.round(h * k / 64.0)) * 64, int(np.round(w * k / 64.0)) * 64
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


class DWPose:
    """body=True, face=True: the `pose` task (body + face, no hands); body=False: the `face` task."""

    def __init__(self, folder: Path, device: str = "cpu", body: bool = True, face: bool = True):
        import onnxruntime as ort  # onnxruntime loads only where DWPose runs

        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        self.resolution = int(config.get("resolution", 1024))
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.detector = ort.InferenceSession(str(folder / DETECTOR_FILE), options, providers=providers)
        self.pose = ort.InferenceSession(str(folder / POSE_FILE), options, providers=providers)
        self.body, self.face = body, face
        self.name = "pose" if body else "face"

    def restricted(self, body: bool) -> DWPose:
        """The same loaded networks drawing body + face (`pose`) or the face only (`face`)."""
        view = copy.copy(self)
        view.body, view.name = body, "pose" if body else "face"
        return view

    def frame(self, rgb: np.ndarray) -> np.ndarray:
        import cv2  # OpenCV loads only where an annotator or decoder needs it

        oh, ow = rgb.shape[:2]
        image = resize_for_pose(np.ascontiguousarray(rgb[..., ::-1]), self.resolution)
        h, w = image.shape[:2]
        boxes = detect_people(self.detector, image)
        keypoints, scores = to_openpose(*estimate_keypoints(self.pose, boxes, image))
        keypoints = keypoints / np.array([w, h], dtype=np.float64)
        canvas = draw_pose(keypoints, scores, h, w, body=self.body, face=self.face)
        interp = cv2.INTER_LANCZOS4 if oh * ow > h * w else cv2.INTER_AREA
        return cv2.resize(np.ascontiguousarray(canvas[..., ::-1]), (ow, oh), interpolation=interp)

    def __call__(self, frames: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        out = []
        for i, frame in enumerate(to_uint8(frames)):
            out.append(self.frame(frame))
            if progress:
                progress(i + 1, len(frames))
        return from_uint8(np.stack(out))


# --- tiny random-weight ONNX models with DWPose's input/output contract (tests, demos) ------------------

def export_tiny_models(folder: Path, config: dict, seed: int = 0) -> None:
    """A tiny YOLOX-style detector (3 strides, 85 outputs per anchor, sigmoid objectness/classes) and a tiny
    RTMPose-style SimCC head (133 keypoints, x/y bins at 2x input), exported to ONNX like the real files."""
    if importlib.util.find_spec("onnx") is None:  # torch's ONNX exporter needs it; serving real weights does not
        raise RuntimeError("writing the tiny DWPose model needs the onnx package: pip install 'vace-server[tiny]'")
    import torch  # torch loads only where tensors are used (the API process never needs it)
    import torch.nn as nn  # torch loads only where tensors are used (the API process never needs it)

    torch.manual_seed(seed)
    det_size = int(config["detector_size"])
    pose_w, pose_h = (int(v) for v in config["pose_input"])

    class TinyYolox(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=8, padding=1), nn.SiLU())
            self.down = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.SiLU())
                                       for _ in range(2)])
            self.heads = nn.ModuleList([nn.Conv2d(8, 85, 1) for _ in range(3)])
            for stride, head in zip((8, 16, 32), self.heads, strict=True):
                nn.init.normal_(head.weight, std=0.01)
                bias = torch.full((85,), -4.0)
                bias[:2] = 0.0
                bias[2:4] = math.log(det_size / 2 / stride)  # boxes of half the image: NMS keeps a few
                bias[4] = bias[5] = 4.0  # objectness and person score high
                head.bias.data.copy_(bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            feats = [self.stem(x / 255.0)]
            for down in self.down:
                feats.append(down(feats[-1]))
            outs = []
            for feat, head in zip(feats, self.heads, strict=True):
                o = head(feat).flatten(2).transpose(1, 2)
                outs.append(torch.cat([o[..., :4], o[..., 4:].sigmoid()], dim=-1))
            return torch.cat(outs, dim=1)

    class TinyRtmPose(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.SiLU(),
                                          nn.Conv2d(8, 16, 3, stride=4, padding=1), nn.SiLU())
            self.final = nn.Conv2d(16, NUM_KEYPOINTS, 1)
            tokens = math.ceil(pose_h / 16) * math.ceil(pose_w / 16)
            self.mlp = nn.Linear(tokens, 16)
            self.cls_x = nn.Linear(16, pose_w * 2)
            self.cls_y = nn.Linear(16, pose_h * 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feats = self.mlp(self.final(self.backbone(x)).flatten(2))
            return self.cls_x(feats), self.cls_y(feats)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyYolox().eval(), (torch.zeros(1, 3, det_size, det_size),), str(folder / DETECTOR_FILE),
                          input_names=["images"], output_names=["output"], dynamo=False, opset_version=17)
        torch.onnx.export(TinyRtmPose().eval(), (torch.zeros(1, 3, pose_h, pose_w),), str(folder / POSE_FILE),
                          input_names=["input"], output_names=["simcc_x", "simcc_y"], dynamo=False,
                          opset_version=17)
