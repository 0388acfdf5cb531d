"""Every task builder on synthetic media: the (video, mask, references) triple pixel by pixel where the spec
fixes it (tasks that run model annotators use the tiny random-weight annotators)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.synthetic import moving_square_frames
from vace.pipelines.conditioning import tasks
from vace.pipelines.conditioning.annotators import AnnotatorEnv
from vace.pipelines.conditioning.annotators.simple import LUMA
from vace.pipelines.conditioning.primitives import TaskInputs
from vace.pipelines.job.request import GenerationRequest, RequestError
from vace.pipelines.media.codec import Video

W, H, N = 32, 32, 5


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> AnnotatorEnv:
    from vace.pipelines.fixtures.tiny_annotators import write_tiny_annotators

    root = tmp_path_factory.mktemp("annotators")
    write_tiny_annotators(root)
    return AnnotatorEnv(root=root, device="cpu")


def clip(n: int = N, w: int = W, h: int = H, fps: float = 16.0) -> Video:
    return Video(moving_square_frames(n, w, h, size=8, step=2).astype(np.float32) / 255.0, fps)


def inputs(**kw) -> TaskInputs:
    base = dict(width=W, height=H, num_frames=N)
    base.update(kw)
    return TaskInputs(**base)


def solid(color: tuple[int, int, int], w: int = W, h: int = H) -> Image.Image:
    return Image.new("RGB", (w, h), color)


def rgb(color: tuple[int, int, int]) -> np.ndarray:
    return np.array(color, dtype=np.float32) / 255.0


# --- no source video --------------------------------------------------------------------------------

def test_t2v_all_gray_all_ones():
    cond = tasks.build("t2v", inputs())
    assert cond.video.shape == (N, H, W, 3) and np.all(cond.video == 0.5)
    assert np.all(cond.mask == 1.0) and cond.reference_images == []


def test_r2v_references_fitted_on_white_canvas():
    ref = solid((255, 0, 0), 16, 32)  # tall image: white bars left and right
    cond = tasks.build("r2v", inputs(reference_images=[ref]))
    canvas = np.asarray(cond.reference_images[0])
    assert canvas.shape == (H, W, 3)
    assert np.all(canvas[:, :8] == 255) and np.all(canvas[:, 24:] == 255)
    assert np.all(canvas[:, 8:24] == (255, 0, 0))
    assert np.all(cond.video == 0.5) and np.all(cond.mask == 1.0)
    with pytest.raises(RequestError) as err:
        tasks.build("r2v", inputs())
    assert err.value.field == "reference_images"


@pytest.mark.parametrize("name,first,last", [("firstframe", True, False), ("lastframe", False, True),
                                             ("firstlastframe", True, True)])
def test_first_last_frame_slots(name, first, last):
    red, blue = solid((255, 0, 0)), solid((0, 0, 255))
    cond = tasks.build(name, inputs(first_frame=red if first else None, last_frame=blue if last else None))
    assert cond.num_frames == N
    expected_mask = np.ones(N)
    if first:
        assert np.allclose(cond.video[0], rgb((255, 0, 0)))
        expected_mask[0] = 0
    if last:
        assert np.allclose(cond.video[-1], rgb((0, 0, 255)))
        expected_mask[-1] = 0
    middle = slice(1 if first else 0, N - 1 if last else N)
    assert np.all(cond.video[middle] == 0.5)
    assert np.array_equal(cond.mask[:, 0, 0], expected_mask) and np.all(cond.mask == cond.mask[:, :1, :1])


def test_first_frame_missing_image_names_field():
    with pytest.raises(RequestError) as err:
        tasks.build("firstlastframe", inputs(first_frame=solid((1, 2, 3))))
    assert err.value.field == "last_frame"


# --- extension ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,options", [("extension", {}), ("firstclip", {}),
                                          ("extension", {"clip_position": "last"}), ("lastclip", {})])
def test_extension_places_clip_first_or_last(name, options):
    source = clip(3)
    cond = tasks.build(name, inputs(num_frames=9, video=source, options=options))
    last = name == "lastclip" or options.get("clip_position") == "last"
    where = slice(6, 9) if last else slice(0, 3)
    rest = slice(0, 6) if last else slice(3, 9)
    assert np.array_equal(cond.video[where], source.frames)
    assert np.all(cond.video[rest] == 0.5)
    assert np.all(cond.mask[where] == 0) and np.all(cond.mask[rest] == 1)


def test_extension_clip_frames_option_and_limit():
    cond = tasks.build("extension", inputs(video=clip(5), options={"clip_frames": 2}))
    assert np.all(cond.mask[:2] == 0) and np.all(cond.mask[2:] == 1)
    # A clip as long as the output still leaves its last frame to generate.
    cond = tasks.build("extension", inputs(video=clip(N)))
    assert np.all(cond.mask[:N - 1] == 0) and np.all(cond.mask[N - 1] == 1)
    with pytest.raises(RequestError) as err:
        tasks.build("extension", inputs(video=clip(N), options={"clip_frames": N}))
    assert err.value.field == "task_options.clip_frames"


# --- inpainting -------------------------------------------------------------------------------------------

def box_mask(n: int | None = None) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.float32)
    mask[8:20, 4:16] = 1.0
    return mask if n is None else np.repeat(mask[None], n, axis=0)


def test_inpainting_mask_video_fills_region_gray():
    source = clip()
    masks = box_mask(N)
    masks[2:, 8:20, 4:16] = 0.0
    masks[2:, 0:4, 20:30] = 0.8  # above threshold
    cond = tasks.build("inpainting", inputs(video=source, mask_video=masks))
    expected = (masks >= 0.5).astype(np.float32)
    assert np.array_equal(cond.mask, expected)
    inside = expected[..., None] > 0.5
    assert np.all(np.where(inside, cond.video, 0.5) == 0.5)
    assert np.array_equal(np.where(inside, 0, cond.video), np.where(inside, 0, source.frames))


def test_inpainting_static_mask_image_on_every_frame():
    cond = tasks.build("inpainting", inputs(video=clip(), mask_image=box_mask()))
    assert np.array_equal(cond.mask, box_mask(N))
    assert np.all(cond.video[:, 8:20, 4:16] == 0.5)


def test_inpainting_tracked_mask_image(env):
    cond = tasks.build("inpainting", inputs(video=clip(), mask_image=box_mask(), options={"mask_tracking": "sam2"}),
                       env)
    assert cond.mask.shape == (N, H, W) and set(np.unique(cond.mask)) <= {0.0, 1.0}
    assert np.array_equal(cond.mask[0], box_mask())  # frame 0 keeps the given mask exactly
    inside = cond.mask[..., None] > 0.5
    assert np.all(np.where(inside, cond.video, 0.5) == 0.5)


def test_inpainting_without_mask_names_mask():
    with pytest.raises(RequestError) as err:
        tasks.build("inpainting", inputs(video=clip()))
    assert err.value.field == "mask"


# --- outpainting / reframe ------------------------------------------------------------------------------

def test_outpainting_left_right_places_original_in_the_middle():
    source = clip(N, 32, 32)
    cond = tasks.build("outpainting", inputs(width=64, height=32, video=source,
                                             options={"expand_left": True, "expand_right": True,
                                                      "expand_ratio": 0.5}))
    # canvas 16 + 32 + 16 = 64 wide, 32 high: exactly the output, so the original sits at x 16..47, unscaled.
    assert np.array_equal(cond.video[:, :, 16:48], source.frames)
    assert np.all(cond.video[:, :, :16] == 0.5) and np.all(cond.video[:, :, 48:] == 0.5)
    assert np.all(cond.mask[:, :, 16:48] == 0)
    assert np.all(cond.mask[:, :, :16] == 1) and np.all(cond.mask[:, :, 48:] == 1)


def test_outpainting_top_only_scales_canvas_into_output():
    source = clip(N, 32, 32)
    cond = tasks.build("outpainting", inputs(width=32, height=32, video=source,
                                             options={"expand_top": True, "expand_ratio": 1.0}))
    # canvas 32 x 64 -> scale 0.5 -> 16 x 32 centred: original at x 8..23, y 16..31.
    mask = np.ones((H, W), np.float32)
    mask[16:32, 8:24] = 0
    assert np.array_equal(cond.mask[0], mask)
    assert np.all(cond.video[:, :16] == 0.5) and np.all(cond.video[:, :, :8] == 0.5)


def test_outpainting_without_a_side_expands_all_four():
    """The official VACE outpainting preprocessor's default: every side grows by expand_ratio."""
    source = clip(N, 32, 32)
    cond = tasks.build("outpainting", inputs(width=32, height=32, video=source, options={"expand_ratio": 0.5}))
    # canvas 64 x 64 -> scale 0.5 -> the original at 16 x 16 in the centre, a border of 8 on every side.
    mask = np.ones((H, W), np.float32)
    mask[8:24, 8:24] = 0
    assert np.array_equal(cond.mask[0], mask) and np.all(cond.video[:, :8] == 0.5)


def letterboxed(n: int = N) -> Video:
    frames = np.zeros((n, 32, 64, 3), np.float32)
    frames[:, 4:28] = 0.6  # content rows 4..27, black bars above and below
    frames[:, 10:14, 20:30] = (1.0, 0.0, 0.0)
    return Video(frames, 16.0)


def test_reframe_trims_bars_and_fits_new_aspect():
    cond = tasks.build("reframe", inputs(width=32, height=32, video=letterboxed()))
    # content 64 x 24 -> contain scale 0.5 -> 32 x 12, centred at y 10..21.
    assert np.all(cond.mask[:, 10:22] == 0) and np.all(cond.mask[:, :10] == 1) and np.all(cond.mask[:, 22:] == 1)
    assert np.all(cond.video[:, :10] == 0.5) and np.all(cond.video[:, 22:] == 0.5)
    assert np.allclose(cond.video[:, 10:22, :8], 0.6, atol=1e-5)
    # Without trimming the bars are kept as content: 64 x 32 -> 32 x 16 at y 8..23.
    cond = tasks.build("reframe", inputs(width=32, height=32, video=letterboxed(),
                                         options={"trim_borders": False}))
    assert np.all(cond.mask[:, 8:24] == 0) and np.all(cond.mask[:, :8] == 1)


def test_reframe_zoom_factor_one_covers_frame():
    cond = tasks.build("reframe", inputs(width=32, height=32, video=letterboxed(), options={"zoom_factor": 1.0}))
    assert np.all(cond.mask == 0)


# --- control signals ---------------------------------------------------------------------------------------

def test_gray_is_bt601_luma_on_three_channels():
    source = clip()
    cond = tasks.build("gray", inputs(video=source))
    luma = source.frames @ LUMA
    for c in range(3):
        assert np.allclose(cond.video[..., c], luma, atol=1e-6)
    assert np.all(cond.mask == 1)


@pytest.mark.parametrize("name", ["depth", "pose", "face", "flow", "scribble", "gray"])
def test_preprocess_false_takes_video_as_control(name):
    source = clip()
    cond = tasks.build(name, inputs(video=source, options={"preprocess": False}))
    assert np.array_equal(cond.video, source.frames) and np.all(cond.mask == 1)


@pytest.mark.parametrize("name,options", [("depth", {}), ("pose", {}), ("face", {}), ("scribble", {}),
                                          ("scribble", {"annotator": "canny"}), ("flow", {"annotator": "farneback"})])
def test_annotated_control_tasks(env, name, options):
    source = clip()
    cond = tasks.build(name, inputs(video=source, options=options), env)
    assert cond.video.shape == (N, H, W, 3) and cond.video.dtype == np.float32
    assert 0 <= cond.video.min() and cond.video.max() <= 1
    assert np.all(cond.mask == 1)
    assert not np.array_equal(cond.video, source.frames)


def test_depth_frames_are_min_max_normalised(env):
    cond = tasks.build("depth", inputs(video=clip()), env)
    for frame in cond.video:
        assert frame.min() == 0.0 and frame.max() == 1.0
        assert np.array_equal(frame[..., 0], frame[..., 2])


# --- layout and compositions ---------------------------------------------------------------------------------

BOXES = [[2, 2, 10, 10], [22, 12, 30, 20]]


def expected_box(k: int, n: int) -> tuple[int, int, int, int]:
    t = k / (n - 1)
    return tuple(int(a + (b - a) * t) for a, b in zip(BOXES[0], BOXES[1], strict=True))


@pytest.mark.parametrize("k", [0, 2, 4])
def test_layout_box_position_in_frame_k(k):
    cond = tasks.build("layout", inputs(options={"boxes": BOXES}))
    x1, y1, x2, y2 = expected_box(k, N)
    frame = cond.video[k]
    outline = np.zeros((H, W), bool)
    outline[y1:y2 + 1, x1:x2 + 1] = True
    outline[y1 + 2:y2 - 1, x1 + 2:x2 - 1] = False
    assert np.all(frame[outline] == 0.0) and np.all(frame[~outline] == 1.0)
    assert np.all(cond.mask == 1)


def test_layout_needs_boxes():
    with pytest.raises(RequestError) as err:
        tasks.build("layout", inputs())
    assert err.value.field == "task_options.boxes"
    with pytest.raises(RequestError) as err:
        tasks.build("layout", inputs(options={"boxes": [[0, 0, 4, 4]]}))
    assert err.value.field == "task_options.boxes"
    # JSON bodies may carry NaN / Infinity: refused, not drawn as garbage boxes.
    for bad in (float("nan"), float("inf")):
        with pytest.raises(RequestError) as err:
            tasks.build("layout", inputs(options={"boxes": [[0, 0, bad, 4], [1, 1, 5, 5]]}))
        assert err.value.field == "task_options.boxes"


def test_move_anything_image_then_layout():
    cond = tasks.build("move-anything", inputs(first_frame=solid((0, 255, 0)), options={"boxes": BOXES}))
    assert np.allclose(cond.video[0], rgb((0, 255, 0)))
    layout = tasks.build("layout", inputs(options={"boxes": BOXES}))
    assert np.array_equal(cond.video[1:], layout.video[1:])
    assert np.all(cond.mask[0] == 0) and np.all(cond.mask[1:] == 1)


def test_swap_anything_tracks_mask_and_needs_references(env):
    ref = solid((255, 255, 0), 16, 16)
    cond = tasks.build("swap-anything", inputs(video=clip(), mask_image=box_mask(), reference_images=[ref]), env)
    assert np.array_equal(cond.mask[0], box_mask()) and len(cond.reference_images) == 1
    assert np.all(np.where(cond.mask[..., None] > 0.5, cond.video, 0.5) == 0.5)
    with pytest.raises(RequestError) as err:
        tasks.build("swap-anything", inputs(video=clip(), mask_image=box_mask()), env)
    assert err.value.field == "reference_images"


def test_animate_anything_pose_video_with_references(env):
    ref = solid((255, 255, 0), 16, 16)
    source = clip()
    cond = tasks.build("animate-anything", inputs(video=source, reference_images=[ref],
                                                  options={"preprocess": False}))
    assert np.array_equal(cond.video, source.frames) and np.all(cond.mask == 1)
    cond = tasks.build("animate-anything", inputs(video=source, reference_images=[ref]), env)
    assert cond.video.shape == (N, H, W, 3) and len(cond.reference_images) == 1
    with pytest.raises(RequestError) as err:
        tasks.build("animate-anything", inputs(video=source, options={"preprocess": False}))
    assert err.value.field == "reference_images"


def test_expand_anything_outpainted_first_frame_then_gray():
    ref = solid((255, 255, 0), 16, 16)
    cond = tasks.build("expand-anything", inputs(width=64, height=32, first_frame=solid((0, 0, 255), 32, 32),
                                                 reference_images=[ref],
                                                 options={"expand_left": True, "expand_right": True,
                                                          "expand_ratio": 0.5}))
    assert np.allclose(cond.video[0, :, 16:48], rgb((0, 0, 255)))
    assert np.all(cond.video[0, :, :16] == 0.5) and np.all(cond.video[1:] == 0.5)
    assert np.all(cond.mask[0, :, 16:48] == 0) and np.all(cond.mask[0, :, :16] == 1) and np.all(cond.mask[1:] == 1)


# --- options, match_input, missing weights --------------------------------------------------------------------

def test_match_input_frames_and_fps():
    cond = tasks.build("gray", inputs(num_frames=81, video=clip(11, fps=24.0),
                                      options={"match_input_num_frames": True,
                                               "match_input_frames_per_second": True}))
    assert cond.num_frames == 9 and cond.fps == 24.0
    assert tasks.input_frame_count(3) == 5 and tasks.input_frame_count(1000) == 241


@pytest.mark.parametrize("options,field", [({"expand_ratio": -1}, "task_options.expand_ratio"),
                                           ({"zoom_factor": "big"}, "task_options.zoom_factor"),
                                           ({"preprocess": "maybe"}, "task_options.preprocess"),
                                           ({"annotator": "sobel"}, "task_options.annotator"),
                                           ({"mask_tracking": "xmem"}, "task_options.mask_tracking"),
                                           ({"clip_position": "middle"}, "task_options.clip_position")])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(RequestError) as err:
        tasks.build("flow", inputs(video=clip(), options=options))
    assert err.value.field == field


def test_unknown_task():
    with pytest.raises(RequestError) as err:
        tasks.build("levitate", inputs())
    assert err.value.field == "task"


def test_missing_annotator_weights_fail_before_any_work(tmp_path: Path):
    empty = AnnotatorEnv(root=tmp_path, device="cpu")
    with pytest.raises(RequestError) as err:
        tasks.build("depth", inputs(video=clip()), empty)
    message = str(err.value)
    assert "depth-anything-v2" in message and str(tmp_path / "depth-anything-v2") in message
    assert "huggingface-cli download" in message
    # Weight-free choices and ready control videos need nothing.
    tasks.build("flow", inputs(video=clip(), options={"annotator": "farneback"}), empty)
    tasks.build("depth", inputs(video=clip(), options={"preprocess": False}), empty)


def test_preflight_from_request_alone(tmp_path: Path, env):
    request = GenerationRequest(prompt="x", video="clip.mp4", mask="mask.png", task="swap-anything",
                                reference_images=["r.png"])
    assert tasks.preflight(request, env) == ["sam2"]
    with pytest.raises(RequestError) as err:
        tasks.preflight(request, AnnotatorEnv(root=tmp_path))
    assert "sam2" in str(err.value)
    video_mask = GenerationRequest(prompt="x", video="clip.mp4", mask="mask.mp4", task="swap-anything")
    assert tasks.preflight(video_mask, AnnotatorEnv(root=tmp_path)) == []
    assert tasks.preflight(GenerationRequest(prompt="x", video="v.mp4", task="pose"), env) == ["pose"]
    # Without a task name the same inference as at build time: nothing to run for these, and a
    # first frame with a video is refused up front.
    for implied in (dict(), dict(video="v.mp4"), dict(video="v.mp4", mask="m.png"), dict(first_frame="f.png")):
        assert tasks.preflight(GenerationRequest(prompt="x", **implied), AnnotatorEnv(root=tmp_path)) == []
    with pytest.raises(RequestError) as err:
        tasks.preflight(GenerationRequest(prompt="x", video="v.mp4", first_frame="f.png"), env)
    assert err.value.field == "first_frame"
    assert tasks.implied_task(True, True, False, False, False) == "inpainting"
    assert tasks.implied_task(False, False, True, True, True) == "firstlastframe"


def test_unknown_task_option_is_refused_by_name():
    from vace.pipelines.conditioning.tasks.options import parse_options

    with pytest.raises(RequestError) as info:
        parse_options("outpainting", {"expand_left": True, "expand_lefft": True})
    assert info.value.field == "task_options.expand_lefft" and "unknown task option" in info.value.message
    assert parse_options("firstframe", {"transparency_mode": "white"}).transparency_mode == "white"
    with pytest.raises(RequestError) as info:
        parse_options("firstframe", {"transparency_mode": "pink"})
    assert info.value.field == "task_options.transparency_mode"


def test_first_frame_with_alpha_follows_transparency_mode():
    clear = Image.new("RGBA", (W, H), (255, 0, 0, 0))
    aware = tasks.build("firstframe", inputs(first_frame=clear))
    assert np.all(aware.mask[0] == 1) and np.allclose(aware.video[0], 0.5)
    white = tasks.build("firstframe", inputs(first_frame=clear, options={"transparency_mode": "white"}))
    assert np.all(white.mask[0] == 0) and np.allclose(white.video[0], 1.0)
