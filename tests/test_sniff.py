"""pipelines.media.sniff: media judged by content, decoded far enough to know its kind and usable size."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.synthetic import moving_square_frames, solid_image, write_video
from vace.pipelines.job.request import RequestError
from vace.pipelines.media.sniff import IMAGE, VIDEO, inspect_media, sniff


def image_bytes(fmt: str, size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    solid_image(*size, (10, 20, 30)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                       ("GIF", "image/gif"), ("BMP", "image/bmp"), ("TIFF", "image/tiff")])
def test_images_are_recognised_by_their_bytes(tmp_path, fmt, mime):
    path = tmp_path / "upload.txt"  # the name and any claimed type play no part
    path.write_bytes(image_bytes(fmt))
    assert sniff(path.read_bytes()[:189]) == (IMAGE, mime)
    facts = inspect_media(path, "first_frame", (IMAGE,))
    assert (facts.kind, facts.mime, facts.width, facts.height) == (IMAGE, mime, 32, 24)


def test_a_video_is_decoded_and_counted(tmp_path):
    path = write_video(tmp_path / "clip.mp4", moving_square_frames(9, 48, 32)).rename(tmp_path / "clip.png")
    facts = inspect_media(path, "video", (VIDEO,), count_frames=True)
    assert (facts.kind, facts.mime, facts.width, facts.height, facts.num_frames) == (VIDEO, "video/mp4", 48, 32, 9)


@pytest.mark.parametrize("content, message", [
    (b"hello, I am a text file and not a video at all\n" * 4, "matches no supported image or video format"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "cannot decode the image"),
    (b"\0\0\0\x18ftypmp42" + b"\0" * 300, "cannot decode the video"),
])
def test_garbage_is_refused_by_content(tmp_path, content, message):
    path = tmp_path / "x.mp4"
    path.write_bytes(content)
    with pytest.raises(RequestError) as info:
        inspect_media(path, "video", (VIDEO,))
    assert info.value.field == "video" and message in info.value.message
    assert str(tmp_path) not in info.value.message


def test_kind_and_size_must_fit_the_field(tmp_path):
    still = tmp_path / "still"
    still.write_bytes(image_bytes("PNG"))
    with pytest.raises(RequestError, match="expected a video, got an image"):
        inspect_media(still, "video", (VIDEO,))
    clip = write_video(tmp_path / "clip.mp4", moving_square_frames(5, 32, 32))
    with pytest.raises(RequestError, match="expected an image, got a video"):
        inspect_media(clip, "reference_images[0]", (IMAGE,))
    tiny = tmp_path / "tiny"
    tiny.write_bytes(image_bytes("PNG", (4, 64)))
    with pytest.raises(RequestError, match="4x64; each side must be between 8 and"):
        inspect_media(tiny, "first_frame", (IMAGE,))


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # a few KB on disk, 400 megapixels decoded
    with pytest.raises(RequestError, match="over 67108864 pixels per frame"):
        inspect_media(path, "first_frame", (IMAGE,))


def test_an_animated_gif_is_a_video(tmp_path):
    frames = [solid_image(16, 16, (i * 60, 0, 0)) for i in range(3)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert inspect_media(path, "mask").kind == VIDEO
