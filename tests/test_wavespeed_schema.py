"""WaveSpeed schema: every range and enum refused, duration -> frames, translation, envelope, nsfw flags."""

from __future__ import annotations

import pytest

from vace.server.api.wavespeed import schema as ws
from vace.server.api.wavespeed.schema import WaveSpeedInputError, build_job, parse_input

ALL_TASKS = {"control", "depth", "pose", "face", "inpainting", "t2v", "r2v", "firstframe", "lastframe",
             "firstlastframe"}
NUMERIC = [("duration", [4, 11]), ("num_inference_steps", [0, 41]), ("guidance_scale", [-0.01, 20.01]),
           ("flow_shift", [-0.01, 30.01]), ("context_scale", [-0.01, 2.01]), ("seed", [-2, 2147483648])]
ENUMS = ["task", "size"]


@pytest.mark.parametrize("name,value", [(n, v) for n, vs in NUMERIC for v in vs] + [(n, "nope") for n in ENUMS]
                         + [("images", ["a"] * 6), ("prompt", "")])
def test_every_out_of_range_and_unknown_enum_is_refused(name, value):
    with pytest.raises(WaveSpeedInputError) as err:
        parse_input({"prompt": "x", name: value})
    assert err.value.errors[0][0] == name


@pytest.mark.parametrize("duration,frames", [(5, 81), (6, 97), (7, 113), (8, 129), (9, 145), (10, 161)])
def test_duration_to_frames(duration, frames):
    job = build_job(parse_input({"prompt": "x", "duration": duration}), available_tasks=ALL_TASKS)
    assert job.request.num_frames == frames and (frames - 1) % 4 == 0 and job.request.fps == 16


def test_defaults_and_translation():
    data = parse_input({"prompt": "x", "video": "v", "images": ["a"], "context_scale": 0.5, "flow_shift": 3,
                        "size": "480*832"})
    assert data.task == "depth" and data.enable_safety_checker and data.num_inference_steps == 30
    job = build_job(data, available_tasks=ALL_TASKS)
    r = job.request
    assert (r.task, r.task_options, r.width, r.height, r.conditioning_scale, r.shift, r.reference_images) == \
        ("depth", {"preprocess": True}, 480, 832, 0.5, 3.0, ["a"])
    assert job.deliver.safety_check and not job.sync_mode
    none = build_job(parse_input({"prompt": "x", "video": "v", "task": "none"}), available_tasks=ALL_TASKS)
    assert none.request.task is None and none.request.video == "v"
    inp = build_job(parse_input({"prompt": "x", "video": "v", "task": "inpainting", "mask_image": "m"}),
                    available_tasks=ALL_TASKS)
    assert inp.request.task == "inpainting" and inp.request.mask == "m"
    t2v = build_job(parse_input({"prompt": "x", "first_image": "f", "last_image": "l"}), available_tasks=ALL_TASKS)
    assert t2v.request.task is None and (t2v.request.first_frame, t2v.request.last_frame) == ("f", "l")
    with pytest.raises(WaveSpeedInputError) as err:
        build_job(parse_input({"prompt": "x", "video": "v", "task": "face"}), available_tasks={"control"})
    assert err.value.errors[0][0] == "task"
    with pytest.raises(WaveSpeedInputError):
        parse_input({"prompt": "x", "video": "v", "task": "inpainting"})
    assert ws.wavespeed_field("reference_images[3]") == "images.3"


def test_envelope_and_flags():
    assert ws.envelope({"id": "a"}) == {"code": 200, "message": "success", "data": {"id": "a"}}
    assert ws.nsfw_flags({"safety": {"checked": True, "nsfw": True}}, ["u"]) == [True]
    assert ws.nsfw_flags({"safety": {"checked": False, "nsfw": None}}, ["u"]) == []
    assert ws.nsfw_flags({}, ["u"]) == []
