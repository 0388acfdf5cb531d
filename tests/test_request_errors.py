"""Bad input gets one clear RequestError naming the field, before any model work."""

from __future__ import annotations

import pytest

from vace.pipelines.acceleration.presets import resolve_preset
from vace.pipelines.job.request import GenerationRequest, RequestError, parse_size, snap_frames


def req(**kw) -> GenerationRequest:
    base = dict(prompt="x", width=64, height=48, num_frames=9, steps=2, seed=1)
    base.update(kw)
    return GenerationRequest(**base)


@pytest.mark.parametrize(
    "kwargs,field,fragment",
    [
        (dict(prompt=""), "prompt", "non-empty prompt"),
        (dict(prompt="   "), "prompt", "non-empty prompt"),
        (dict(width=70), "width", "multiple of 16"),
        (dict(height=50), "height", "multiple of 16"),
        (dict(num_frames=3), "num_frames", "between 5 and 241"),
        (dict(num_frames=400), "num_frames", "between 5 and 241"),
        (dict(sampler="ddim"), "sampler", "unipc, dpm++, euler"),
        (dict(reference_images=["a.png"] * 6), "reference_images", "at most 5"),
        (dict(reference_images=["a.png"] * 3, num_frames=5), "reference_images", "3 reference images need at least 9"),
        (dict(seed=-2), "seed", "-1 (random)"),
        (dict(steps=0), "steps", "between 1 and 100"),
        (dict(conditioning_scale=3.0), "conditioning_scale", "between 0 and 2"),
        (dict(mask="m.png"), "mask", "needs a source video"),
        (dict(preset="ludicrous"), "preset", "unknown preset"),  # resolve_preset (acceleration) names it
    ],
)
def test_validation_names_the_field(kwargs, field, fragment):
    with pytest.raises(RequestError) as info:
        resolve_preset(req(**kwargs).validated())
    assert info.value.field == field and fragment in info.value.message


def test_preset_aliases_resolve_to_a_level():
    assert resolve_preset(req(preset="Juiced 🔥 (more speed)").validated()).preset == "low"
    assert resolve_preset(req(preset="regular").validated()).preset == "regular"


def test_frames_snap_to_4n_plus_1():
    assert [snap_frames(n) for n in (5, 6, 7, 8, 80, 81, 82)] == [5, 5, 9, 9, 81, 81, 81]
    assert req(num_frames=80).validated().num_frames == 81


def test_parse_size():
    assert parse_size("832*480") == (832, 480) and parse_size("64x48") == (64, 48)
    with pytest.raises(RequestError):
        parse_size("large")


def test_missing_file_and_undecodable_video(renderer, tmp_path):
    with pytest.raises(RequestError) as info:
        renderer.prepare(req(video=str(tmp_path / "nope.mp4")))
    assert info.value.field == "video" and "file not found" in info.value.message

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 10)
    with pytest.raises(RequestError) as info:
        renderer.prepare(req(video=str(junk)))
    assert info.value.field == "video" and "cannot decode video" in info.value.message

    bad_png = tmp_path / "ref.png"
    bad_png.write_bytes(b"\x89PNG broken")
    with pytest.raises(RequestError) as info:
        renderer.prepare(req(reference_images=[str(bad_png)]))
    assert info.value.field == "reference_images[0]" and "cannot decode image" in info.value.message


def test_urls_to_private_addresses_are_refused(renderer):
    with pytest.raises(RequestError) as info:
        renderer.prepare(req(video="http://127.0.0.1:9/clip.mp4"))
    assert info.value.field == "video" and "loopback address" in info.value.message
    with pytest.raises(RequestError) as info:
        renderer.prepare(req(video="ftp://example.com/clip.mp4"))
    assert "unsupported URL" in info.value.message


def test_malformed_data_uri(renderer):
    with pytest.raises(RequestError) as info:
        renderer.prepare(req(first_frame="data:image/png;base64"))
    assert info.value.field == "first_frame" and "malformed data: URI" in info.value.message


def test_unknown_field_from_dict():
    with pytest.raises(RequestError) as info:
        GenerationRequest.from_dict({"prompt": "x", "colour": "red"})
    assert info.value.field == "colour"
