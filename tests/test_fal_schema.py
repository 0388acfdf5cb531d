"""fal schema: defaults, every range and enum refused in fal's 422 format, translation, sizes, output shape."""

from __future__ import annotations

import pytest

from vace.server.api.fal import schema as fs
from vace.server.api.fal.schema import FalInputError, MediaInfo, build_job, output_size, parse_input

VIDEO = "https://example.com/v.mp4"
ALL_TASKS = {"control", "depth", "pose", "inpainting", "outpainting", "reframe", "t2v", "r2v", "firstframe",
             "lastframe", "firstlastframe"}

# (field, bad values) for every numeric field of every endpoint: just outside each bound.
NUMERIC = [
    ("num_frames", [16, 242]), ("frames_per_second", [4, 31]), ("seed", [-2, 2**32]),
    ("num_inference_steps", [1, 51]), ("guidance_scale", [0.99, 10.01]), ("shift", [0.99, 15.01]),
    ("auto_downsample_min_fps", [0.99, 60.01]), ("temporal_downsample_factor", [-1, 6]),
    ("num_interpolated_frames", [-1, 6]),
]
ENUMS = ["resolution", "aspect_ratio", "sampler", "acceleration", "interpolator_model", "transparency_mode",
         "video_quality", "video_write_mode"]
PER_ENDPOINT_NUMERIC = {"outpainting": [("expand_ratio", [-0.01, 1.01])], "reframe": [("zoom_factor", [-0.01, 1.01])],
                        "": [("expand_ratio", [-0.01, 1.01]), ("zoom_factor", [-0.01, 1.01])]}


def body(sub: str, **extra):
    base = {"prompt": "a fox"}
    if sub:
        base["video_url"] = VIDEO
    if sub == "inpainting":
        base["mask_video_url"] = VIDEO
    return {**base, **extra}


CASES = [(sub, name, v) for sub in fs.SCHEMAS for name, values in NUMERIC + PER_ENDPOINT_NUMERIC.get(sub, [])
         for v in values] + [(sub, name, "nope") for sub in fs.SCHEMAS for name in ENUMS] + \
        [("", "task", "face")]


@pytest.mark.parametrize("sub,name,value", CASES)
def test_every_out_of_range_and_unknown_enum_is_refused_in_fal_format(sub, name, value):
    with pytest.raises(FalInputError) as err:
        parse_input(sub, body(sub, **{name: value}))
    detail = err.value.detail
    assert isinstance(detail, list) and detail
    assert detail[0]["loc"] == ["body", name] and detail[0]["msg"] and detail[0]["type"]


def test_interpolation_downsampling_and_expansion_reach_the_request():
    data = parse_input("depth", body("depth", num_interpolated_frames=2, interpolator_model="rife",
                                     temporal_downsample_factor=1, enable_prompt_expansion=True))
    req = build_job("fal-ai/wan-vace-14b", "depth", data).request
    assert (req.interpolated_frames, req.interpolator, req.temporal_downsample, req.auto_downsample,
            req.expand_prompt) == (2, "rife", 1, False, True)
    auto = build_job("fal-ai/wan-vace-14b", "depth", parse_input("depth", body(
        "depth", enable_auto_downsample=True, auto_downsample_min_fps=12))).request
    assert (auto.auto_downsample, auto.auto_downsample_min_fps, auto.temporal_downsample) == (True, 12, 0)
    assert [fs.fal_field(f) for f in ("interpolated_frames", "interpolator", "temporal_downsample",
                                      "auto_downsample", "expand_prompt")] == \
        ["num_interpolated_frames", "interpolator_model", "temporal_downsample_factor", "enable_auto_downsample",
         "enable_prompt_expansion"]


def test_defaults_and_required_fields():
    data = parse_input("depth", body("depth"))
    assert (data.num_frames, data.frames_per_second, data.num_inference_steps, data.guidance_scale, data.shift) == \
        (81, 16, 30, 5.0, 5.0)
    assert (data.acceleration, data.video_quality, data.video_write_mode, data.interpolator_model) == \
        ("regular", "high", "balanced", "film")
    with pytest.raises(FalInputError) as err:
        parse_input("depth", {"prompt": "x"})
    assert err.value.detail[0]["loc"] == ["body", "video_url"]
    with pytest.raises(FalInputError):
        parse_input("inpainting", {"prompt": "x", "video_url": VIDEO})
    assert parse_input("reframe", {"video_url": VIDEO}).prompt == ""  # reframe: prompt optional
    reframe = parse_input("reframe", {"video_url": VIDEO})
    assert reframe.match_input_num_frames and reframe.trim_borders
    with pytest.raises(FalInputError) as err:
        parse_input("depth", body("depth", bogus=1))
    assert err.value.detail[0]["loc"] == ["body", "bogus"]


def test_endpoints_and_split():
    assert fs.split_endpoint("fal-ai/wan-vace-14b") == ("fal-ai/wan-vace-14b", "")
    assert fs.split_endpoint("fal-ai/wan-vace-14b/pose") == ("fal-ai/wan-vace-14b", "pose")
    assert fs.split_endpoint("fal-ai/wan-22-vace-fun-a14b/reframe") == ("fal-ai/wan-22-vace-fun-a14b", "reframe")
    assert fs.split_endpoint("fal-ai/wan-22-vace-fun-a14b") is None
    assert fs.split_endpoint("fal-ai/other/depth") is None
    assert len(fs.endpoints()) == 11


@pytest.mark.parametrize("res,aspect,source,expected", [
    ("480p", "16:9", None, (832, 480)), ("720p", "9:16", None, (720, 1280)), ("240p", "1:1", None, (240, 240)),
    ("580p", "16:9", None, (1024, 576)), ("360p", "16:9", None, (624, 352)),
    ("auto", "auto", None, (832, 480)),
    ("240p", "auto", MediaInfo(64, 48, 17, 16.0), (320, 240)),
    ("auto", "auto", MediaInfo(1920, 1080, 17, 30.0), (1280, 720)),
    ("auto", "auto", MediaInfo(64, 48, 17, 16.0), (320, 240)),
    ("auto", "16:9", MediaInfo(1000, 500, 17, 16.0), (880, 496)),
])
def test_output_size(res, aspect, source, expected):
    w, h = output_size(res, aspect, source)
    assert (w, h) == expected and w % 16 == 0 and h % 16 == 0


def test_translation_depth_without_preprocess_is_a_control_video():
    data = parse_input("depth", body("depth", preprocess=False, resolution="240p", aspect_ratio="16:9", seed=7,
                                     num_frames=17, frames_per_second=8, sampler="euler", acceleration="none"))
    job = build_job("fal-ai/wan-vace-14b", "depth", data, available_tasks=ALL_TASKS)
    r = job.request
    assert (r.task, r.video, r.width, r.height, r.num_frames, r.fps, r.seed, r.sampler, r.preset, r.shift,
            r.steps) == ("control", VIDEO, 416, 240, 17, 8, 7, "euler", "none", 5.0, 30)
    assert not job.two_experts and not job.deliver.safety_check  # fal's documented default: no check
    pre = build_job("fal-ai/wan-22-vace-fun-a14b", "pose", parse_input("pose", body("pose", preprocess=True)),
                    available_tasks=ALL_TASKS)
    assert pre.request.task == "pose" and pre.request.task_options["preprocess"] is True and pre.two_experts


def test_translation_refuses_a_task_the_server_lacks_naming_the_field():
    data = parse_input("depth", body("depth", preprocess=True))
    with pytest.raises(FalInputError) as err:
        build_job("fal-ai/wan-vace-14b", "depth", data, available_tasks={"control"})
    assert err.value.detail[0]["loc"] == ["body", "preprocess"]


def test_translation_task_options_and_media():
    out = parse_input("outpainting", body("outpainting", expand_left=True, expand_ratio=0.5))
    job = build_job("fal-ai/wan-vace-14b", "outpainting", out, available_tasks=ALL_TASKS)
    assert job.request.task == "outpainting"
    assert job.request.task_options == {"expand_left": True, "expand_right": False, "expand_top": False,
                                        "expand_bottom": False, "expand_ratio": 0.5}
    inp = parse_input("inpainting", {"prompt": "x", "video_url": VIDEO, "mask_image_url": "https://e.com/m.png"})
    job = build_job("fal-ai/wan-vace-14b", "inpainting", inp, available_tasks=ALL_TASKS)
    assert job.request.task == "inpainting" and job.request.mask == "https://e.com/m.png"
    assert job.request.task_options["mask_tracking"] == "sam2"  # fal's guiding mask is tracked
    assert fs.fal_field("mask", job.media_fields) == "mask_image_url"
    both = parse_input("inpainting", {"prompt": "x", "video_url": VIDEO, "mask_image_url": "https://e.com/m.png",
                                      "mask_video_url": "https://e.com/m.mp4"})
    job = build_job("fal-ai/wan-vace-14b", "inpainting", both, available_tasks=ALL_TASKS)
    assert job.request.mask == "https://e.com/m.mp4" and "mask_tracking" not in job.request.task_options
    base = parse_input("", {"prompt": "x", "ref_image_urls": ["a", "b"], "first_frame_url": "f",
                            "transparency_mode": "white"})
    job = build_job("fal-ai/wan-vace-14b", "", base, available_tasks=ALL_TASKS)
    assert job.request.task is None and job.request.reference_images == ["a", "b"]
    assert job.request.first_frame == "f" and job.request.task_options["transparency_mode"] == "white"
    assert fs.fal_field("reference_images[1]") == "ref_image_urls.1"
    reframe = parse_input("reframe", {"video_url": VIDEO, "zoom_factor": 0.2})
    job = build_job("fal-ai/wan-vace-14b", "reframe", reframe, available_tasks=ALL_TASKS,
                    probe=lambda ref, f: MediaInfo(64, 48, 30, 24.0))
    r = job.request
    assert r.task == "reframe" and r.task_options["zoom_factor"] == 0.2 and r.task_options["trim_borders"]
    assert r.num_frames == 29 and r.fps == 24 and (r.width, r.height) == (320, 240)  # matched to the input


def test_encoder_mapping():
    from vace.pipelines.outputs.deliver import crf

    assert [crf(fs.VIDEO_QUALITY[q]) for q in ("low", "medium", "high", "maximum")] == [28, 20, 10, 2]
    data = parse_input("depth", body("depth", video_quality="low", video_write_mode="small", return_frames_zip=True))
    job = build_job("fal-ai/wan-vace-14b", "depth", data, available_tasks=ALL_TASKS)
    assert (job.deliver.quality, job.deliver.preset, job.deliver.frames_zip) == (4.5, "slower", True)


def test_output_json_shape():
    output = {"path": "outputs/x.mp4", "content_type": "video/mp4", "file_name": "x.mp4", "file_size": 10,
              "width": 416, "height": 240, "fps": 16, "num_frames": 17, "duration": 17 / 16, "seed": 3,
              "frames_zip": {"path": "outputs/x-frames.zip", "file_name": "x-frames.zip", "file_size": 5,
                             "content_type": "application/zip"}}
    body_ = fs.output_json("p", output, "https://h/outputs/x.mp4", "https://h/outputs/x-frames.zip")
    assert body_["video"] == {"url": "https://h/outputs/x.mp4", "content_type": "video/mp4", "file_name": "x.mp4",
                              "file_size": 10, "width": 416, "height": 240, "fps": 16, "duration": 17 / 16,
                              "num_frames": 17}
    assert body_["prompt"] == "p" and body_["seed"] == 3 and body_["frames_zip"]["file_name"] == "x-frames.zip"


class RedTracker:
    """A mask tracker whose output the test controls: the red pixels of each frame."""

    name = "sam2"

    def __init__(self):
        self.first_masks: list = []

    def track(self, frames, first_mask, progress=None):
        import numpy as np

        self.first_masks.append(first_mask)
        return ((frames[..., 0] > 0.6) & (frames[..., 1] < 0.4)).astype(np.float32)


@pytest.mark.parametrize("app,sub", [("fal-ai/wan-vace-14b", "inpainting"), ("fal-ai/wan-vace-14b", ""),
                                     ("fal-ai/wan-22-vace-fun-a14b", "inpainting")])
def test_mask_image_url_follows_a_moving_subject(tmp_path, app, sub):
    """fal's mask_image_url is a guiding mask tracked through the video: the conditioning mask of every frame
    is the tracker's, and it moves with the subject (a static mask would stay where frame 0 put it)."""
    import numpy as np

    from tests.synthetic import moving_square_frames, save_image, write_video
    from vace.pipelines.conditioning import tasks
    from vace.pipelines.conditioning.annotators import AnnotatorEnv
    from vace.pipelines.conditioning.inputs import load_inputs

    frames = moving_square_frames(17, 96, 48, size=12, step=3)
    video = write_video(tmp_path / "v.mp4", frames, fps=8)
    first = np.zeros((48, 96), np.uint8)
    first[frames[0, ..., 0] > 200] = 255
    from PIL import Image

    mask = save_image(Image.fromarray(first), tmp_path / "m.png")
    request = {"prompt": "a fox", "video_url": str(video), "mask_image_url": str(mask), "num_frames": 17,
               "resolution": "240p", "aspect_ratio": "16:9"}
    if not sub:
        request["task"] = "inpainting"
    job = build_job(app, sub, parse_input(sub, request), available_tasks=ALL_TASKS)
    tracker = RedTracker()
    inputs = load_inputs(job.request, tmp_path / "work")
    cond = tasks.build(job.request.task, inputs, AnnotatorEnv(root=tmp_path, device="cpu",
                                                              preloaded={"sam2": tracker}))
    assert len(tracker.first_masks) == 1 and tracker.first_masks[0].shape == (240, 416)
    centres = [np.argwhere(m > 0.5)[:, 1].mean() for m in cond.mask]
    assert all(np.diff(centres) > 0)  # the mask moves right with the square, every frame
    assert not np.array_equal(cond.mask[0], cond.mask[-1])
    gray = cond.mask[..., None] > 0.5
    assert np.all(np.where(gray, cond.video, 0.5) == 0.5)  # the tracked region is what gets generated
