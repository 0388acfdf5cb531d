"""service.intake: prompts and media checked at submit, the fetches on a pool of their own."""

from __future__ import annotations

import asyncio

import pytest

from tests.synthetic import data_uri, moving_square_frames, solid_image, write_video
from vace.pipelines.engine.prompt_cache import TEXT_TOKENS
from vace.pipelines.job.request import GenerationRequest, RequestError
from vace.pipelines.media.fetch import FetchPolicy
from vace.server.service.intake import Intake
from vace.server.storage import LocalStorage


@pytest.fixture()
def intake(tiny_model_dir, tmp_path):
    intake = Intake({"tiny": str(tiny_model_dir)}, FetchPolicy(), LocalStorage(tmp_path), workers=2)
    yield intake
    intake.close()


def test_prompts_past_the_text_encoder_are_refused(intake):
    intake.check_prompts(GenerationRequest(prompt="a cat"), "tiny")
    with pytest.raises(RequestError) as info:
        intake.check_prompts(GenerationRequest(prompt="b" * TEXT_TOKENS), "tiny")
    assert info.value.field == "prompt"
    with pytest.raises(RequestError) as info:
        intake.check_prompts(GenerationRequest(prompt="ok", negative_prompt="n" * TEXT_TOKENS), "tiny")
    assert info.value.field == "negative_prompt"


def test_media_is_checked_by_content_per_field(intake, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", moving_square_frames(5, 32, 32))
    image = data_uri(solid_image(32, 32, (1, 2, 3)))
    intake.check_media(GenerationRequest(prompt="x", video=str(clip), reference_images=[image]))
    text_as_png = "data:image/png;base64," + __import__("base64").b64encode(b"just some text").decode()
    with pytest.raises(RequestError) as info:
        intake.check_media(GenerationRequest(prompt="x", reference_images=[image, text_as_png]))
    assert info.value.field == "reference_images[1]"
    with pytest.raises(RequestError, match="expected a video, got an image"):
        intake.check_media(GenerationRequest(prompt="x", video=image))
    with pytest.raises(RequestError, match="expected an image, got a video"):
        intake.check_media(GenerationRequest(prompt="x", first_frame=str(clip)))


def test_checks_run_on_the_fetch_pool(intake):
    names = asyncio.run(intake.run(lambda: __import__("threading").current_thread().name))
    assert names.startswith("vace-fetch")
