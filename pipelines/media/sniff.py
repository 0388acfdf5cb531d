"""What a media file is, judged by its content (never its claimed type or name), and whether it decodes to an
image or video of a usable size. Errors name the field and never the file's path on this machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
from PIL import Image

from vace.pipelines.job.request import RequestError

IMAGE, VIDEO = "image", "video"
MIN_SIDE = 8  # smaller sources carry no usable detail once resized to the render size
MAX_SIDE = 16384
MAX_PIXELS = 8192 * 8192  # per frame: a bigger image is a decompression bomb, not a reference
_TS_PACKET = 188
HEAD_BYTES = _TS_PACKET + 1  # what sniff() looks at

_PREFIXES: tuple[tuple[bytes, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", IMAGE, "image/png"),
    (b"\xff\xd8\xff", IMAGE, "image/jpeg"),
    (b"GIF87a", IMAGE, "image/gif"),
    (b"GIF89a", IMAGE, "image/gif"),
    (b"BM", IMAGE, "image/bmp"),
    (b"II*\x00", IMAGE, "image/tiff"),
    (b"MM\x00*", IMAGE, "image/tiff"),
    (b"\x1a\x45\xdf\xa3", VIDEO, "video/x-matroska"),  # Matroska and WebM
    (b"FLV", VIDEO, "video/x-flv"),
    (b"OggS", VIDEO, "video/ogg"),
    (b"\x00\x00\x01\xba", VIDEO, "video/mpeg"),
)
_IMAGE_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1")
_QUICKTIME_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


@dataclass(frozen=True)
class MediaFacts:
    """A decoded source: its kind, sniffed type and geometry (frame count and fps for videos when counted)."""

    kind: str
    mime: str
    width: int
    height: int
    num_frames: int | None = None
    fps: float | None = None


def sniff(head: bytes) -> tuple[str, str] | None:
    """(kind, media type) from a file's first bytes, or None when they match no image or video format."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return IMAGE, "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return VIDEO, "video/x-msvideo"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return IMAGE, "image/avif" if brand.startswith(b"avi") else "image/heic"
        return VIDEO, "video/quicktime" if brand == b"qt  " else "video/mp4"
    if head[4:8] in _QUICKTIME_ATOMS:
        return VIDEO, "video/quicktime"
    for prefix, kind, mime in _PREFIXES:
        if head.startswith(prefix):
            return kind, mime
    if len(head) > _TS_PACKET and head[0] == head[_TS_PACKET] == 0x47:  # two MPEG-TS sync bytes
        return VIDEO, "video/mp2t"
    return None


def inspect_media(path: Path, field_name: str, expect: tuple[str, ...] = (IMAGE, VIDEO),
                  count_frames: bool = False) -> MediaFacts:
    """Sniff and decode `path` far enough to know it is an image or video (of a kind in `expect`) of a usable
    size; RequestError naming `field_name` otherwise. An animated GIF counts as a video."""
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    found = sniff(head)
    wanted = " or ".join(expect)
    if found is None:
        raise RequestError(field_name, f"not {_a(wanted)} (its content matches no supported image or video "
                                       "format, whatever type it was labelled)")
    kind, mime = found
    facts = _decode_image(path, field_name, mime) if kind == IMAGE else _decode_video(path, field_name, mime,
                                                                                       count_frames)
    if facts.kind not in expect:
        raise RequestError(field_name, f"expected {_a(wanted)}, got {_a(facts.kind)} ({mime})")
    if not (MIN_SIDE <= facts.width <= MAX_SIDE and MIN_SIDE <= facts.height <= MAX_SIDE):
        raise RequestError(field_name, f"the {facts.kind} is {facts.width}x{facts.height}; each side must be "
                                           f"between {MIN_SIDE} and {MAX_SIDE} pixels")
    if facts.width * facts.height > MAX_PIXELS:
        raise RequestError(field_name, f"the {facts.kind} is {facts.width}x{facts.height}, over {MAX_PIXELS} "
                                       "pixels per frame")
    return facts


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _decode_image(path: Path, field_name: str, mime: str) -> MediaFacts:
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                return MediaFacts(IMAGE, mime, width, height)  # refused by size, never decoded
            frames = getattr(img, "n_frames", 1)
            img.load()
    except Image.DecompressionBombError:
        raise RequestError(field_name, f"the image has over {MAX_PIXELS} pixels per frame") from None
    except (OSError, ValueError, SyntaxError):
        raise RequestError(field_name, f"cannot decode the image: it is labelled {mime} by its first bytes but "
                                       "is truncated or corrupt") from None
    if frames > 1 and mime == "image/gif":
        return MediaFacts(VIDEO, mime, width, height, frames)
    return MediaFacts(IMAGE, mime, width, height)


def _decode_video(path: Path, field_name: str, mime: str, count_frames: bool) -> MediaFacts:
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        try:
            meta = next(reader)
            next(reader)  # one whole frame: the stream really decodes
        finally:
            reader.close()
        frames = imageio_ffmpeg.count_frames_and_secs(str(path))[0] if count_frames else None
    except (RuntimeError, OSError, StopIteration, KeyError, ValueError, IndexError):
        raise RequestError(field_name, f"cannot decode the video: it looks like {mime} by its first bytes but "
                                       "holds no frame that decodes") from None
    width, height = (int(v) for v in meta["size"])
    return MediaFacts(VIDEO, mime, width, height, frames, float(meta.get("fps") or 16.0))
