"""process_image: resize one Cloud Storage image into thumbnails in the same bucket.

Payload::

    {"bucket": "b", "source": "uploads/cat.jpg", "sizes": [[64, 64], [256, 256]],
     "output_prefix": "thumbnails/", "format": "JPEG"}

Each output fits within its size, keeps the aspect ratio, is never enlarged, has the
EXIF orientation applied, and is written to ``{output_prefix}{stem}_{w}x{h}.{ext}``.
The names depend only on the payload, so a retry overwrites its earlier outputs. Two
sources with the same file name in different folders map to the same output names.
"""

from __future__ import annotations

import io
import posixpath
import re
import threading
from dataclasses import dataclass
from typing import Any

from google.cloud.storage import Client as StorageClient
from PIL import Image, ImageOps, UnidentifiedImageError
from taskworker.failures import PayloadError, PermanentError, TransientError
from taskworker.registry import TaskContext, TaskResult, TaskType

MAX_SIZES = 10
MAX_DIMENSION = 4096
# Decoding a larger image risks a decompression bomb and the instance's memory.
MAX_SOURCE_PIXELS = 50_000_000
MAX_SOURCE_BYTES = 100 * 1024 * 1024
# Cloud Storage's limit on an object name, in UTF-8 bytes.
MAX_OBJECT_NAME_BYTES = 1024
DEFAULT_OUTPUT_PREFIX = "thumbnails/"

# Output format -> (file extension, content type).
OUTPUT_FORMATS = {
    "JPEG": ("jpg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
}
# Source formats that default to an output format of their own family. Any other
# source (GIF, BMP, TIFF, ...) defaults to PNG, which is lossless and keeps alpha.
_SOURCE_TO_OUTPUT_FORMAT = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP"}
_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "JPEG": {"quality": 85},
    "PNG": {},
    "WEBP": {"quality": 80},
}
_PAYLOAD_FIELDS = {"bucket", "source", "sizes", "output_prefix", "format"}
# Cloud Storage bucket names: lowercase letters, digits, "-", "_" and ".", starting
# and ending with a letter or digit. They have 3 to 63 characters, or up to 222 with
# dots.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")

_client_lock = threading.Lock()
_client: StorageClient | None = None


@dataclass(frozen=True)
class ImageJob:
    """A checked process_image payload."""

    bucket: str
    source: str
    sizes: tuple[tuple[int, int], ...]
    output_prefix: str
    format: str | None

    def output_name(self, width: int, height: int, output_format: str) -> str:
        stem = posixpath.splitext(posixpath.basename(self.source))[0]
        extension = OUTPUT_FORMATS[output_format][0]
        return f"{self.output_prefix}{stem}_{width}x{height}.{extension}"


def parse_payload(payload: dict[str, Any]) -> ImageJob:
    """Check a process_image payload, raising PayloadError for the first bad field."""
    unknown = sorted(set(payload) - _PAYLOAD_FIELDS)
    if unknown:
        raise PayloadError(unknown[0], "unknown field")

    bucket = _required_string(payload, "bucket")
    if not _BUCKET_NAME.match(bucket) or ("." not in bucket and len(bucket) > 63):
        raise PayloadError("bucket", "is not a valid Cloud Storage bucket name")
    source = _object_name(_required_string(payload, "source"), "source")
    if source.endswith("/"):
        raise PayloadError("source", "names a folder, not an object")

    output_prefix = payload.get("output_prefix", DEFAULT_OUTPUT_PREFIX)
    if not isinstance(output_prefix, str):
        raise PayloadError("output_prefix", "must be a string")
    if "\r" in output_prefix or "\n" in output_prefix:
        raise PayloadError("output_prefix", "must not contain line breaks")

    output_format = payload.get("format")
    if output_format is not None:
        if not isinstance(output_format, str) or output_format.upper() not in (
            OUTPUT_FORMATS
        ):
            raise PayloadError("format", f"must be one of {', '.join(OUTPUT_FORMATS)}")
        output_format = output_format.upper()

    job = ImageJob(
        bucket=bucket,
        source=source,
        sizes=_sizes(payload.get("sizes")),
        output_prefix=output_prefix,
        format=output_format,
    )
    longest = job.output_name(MAX_DIMENSION, MAX_DIMENSION, output_format or "WEBP")
    if len(longest.encode("utf-8")) > MAX_OBJECT_NAME_BYTES:
        raise PayloadError(
            "output_prefix",
            f"makes output names longer than {MAX_OBJECT_NAME_BYTES} bytes",
        )
    return job


def run(job: ImageJob, context: TaskContext) -> TaskResult:
    """Download the source, write one output per size, return the outputs' URLs."""
    bucket = _storage_client().bucket(job.bucket)
    source_url = f"gs://{job.bucket}/{job.source}"

    blob = bucket.get_blob(job.source)
    if blob is None:
        # The upload may still be under way, so a later delivery can succeed.
        raise TransientError(f"source object {source_url} not found")
    if blob.size is not None and blob.size > MAX_SOURCE_BYTES:
        raise PermanentError(
            f"source object {source_url} is {blob.size} bytes, "
            f"more than the {MAX_SOURCE_BYTES} bytes allowed"
        )
    data = blob.download_as_bytes()
    context.log.info("downloaded %s (%d bytes)", source_url, len(data), bytes=len(data))

    image, source_format, icc_profile = _decode(data, source_url)
    output_format = job.format or _SOURCE_TO_OUTPUT_FORMAT.get(source_format, "PNG")
    content_type = OUTPUT_FORMATS[output_format][1]

    outputs = []
    for width, height in job.sizes:
        thumbnail = image.copy()
        thumbnail.thumbnail((width, height), Image.Resampling.LANCZOS)
        encoded = _encode(thumbnail, output_format, icc_profile)

        name = job.output_name(width, height, output_format)
        bucket.blob(name).upload_from_string(encoded, content_type=content_type)
        url = f"gs://{job.bucket}/{name}"
        outputs.append(url)
        context.log.info(
            "wrote %s (%dx%d, %d bytes)",
            url,
            thumbnail.width,
            thumbnail.height,
            len(encoded),
            output=url,
            width=thumbnail.width,
            height=thumbnail.height,
            bytes=len(encoded),
        )
    return TaskResult(outputs=outputs)


TASK_TYPE = TaskType(name="process_image", parse_payload=parse_payload, run=run)


def _required_string(payload: dict[str, Any], field: str) -> str:
    value = payload.get(field)
    if value is None:
        raise PayloadError(field, "is missing")
    if not isinstance(value, str) or not value:
        raise PayloadError(field, "must be a non-empty string")
    return value


def _object_name(name: str, field: str) -> str:
    if len(name.encode("utf-8", errors="replace")) > MAX_OBJECT_NAME_BYTES:
        raise PayloadError(field, f"is longer than {MAX_OBJECT_NAME_BYTES} bytes")
    if "\r" in name or "\n" in name:
        raise PayloadError(field, "must not contain line breaks")
    if name in (".", ".."):
        raise PayloadError(field, "is not a valid object name")
    return name


def _sizes(value: Any) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list):
        raise PayloadError("sizes", "must be a list of [width, height] pairs")
    if not 1 <= len(value) <= MAX_SIZES:
        raise PayloadError("sizes", f"must have 1 to {MAX_SIZES} entries")
    sizes: list[tuple[int, int]] = []
    for index, entry in enumerate(value):
        field = f"sizes[{index}]"
        if not isinstance(entry, list) or len(entry) != 2:
            raise PayloadError(field, "must be a [width, height] pair")
        for axis, number in zip(("width", "height"), entry, strict=True):
            if isinstance(number, bool) or not isinstance(number, int):
                raise PayloadError(field, f"{axis} must be an integer")
            if not 1 <= number <= MAX_DIMENSION:
                raise PayloadError(field, f"{axis} must be from 1 to {MAX_DIMENSION}")
        size = (entry[0], entry[1])
        if size in sizes:
            raise PayloadError(field, f"repeats sizes[{sizes.index(size)}]")
        sizes.append(size)
    return tuple(sizes)


def _decode(data: bytes, source_url: str) -> tuple[Image.Image, str, bytes | None]:
    """Decode an image, checking its pixel count before any pixel is decoded.

    Returns the image upright (EXIF orientation applied) in mode L, LA, RGB or RGBA,
    its format, and its ICC profile when that still describes the pixels.
    """
    source_format = ""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > MAX_SOURCE_PIXELS:
                raise PermanentError(
                    f"source {source_url} is {width}x{height} pixels, more than "
                    f"the {MAX_SOURCE_PIXELS} allowed"
                )
            source_format = opened.format or ""
            opened.load()
            upright = ImageOps.exif_transpose(opened)
    except UnidentifiedImageError:
        raise PermanentError(f"source {source_url} is not an image") from None
    except Image.DecompressionBombError:
        raise PermanentError(
            f"source {source_url} has more pixels than the {MAX_SOURCE_PIXELS} allowed"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow reports truncated and corrupt files with these.
        described = source_format or "an image"
        raise PermanentError(
            f"source {source_url} could not be decoded as {described}: {error}"
        ) from None

    icc_profile = upright.info.get("icc_profile")
    if upright.mode in ("CMYK", "LAB", "YCbCr", "HSV"):
        # The profile describes the source's colour space, not the RGB result.
        icc_profile = None
    return _normalize_mode(upright), source_format, icc_profile


def _normalize_mode(image: Image.Image) -> Image.Image:
    """Convert to L, LA, RGB or RGBA, so resizing filters and every encoder apply."""
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if image.mode == "1":
        return image.convert("L")
    if image.mode.startswith("I;16"):
        # 16-bit samples: keep the top 8 bits instead of clipping at 255.
        return image.convert("I").point(lambda value: value / 256).convert("L")
    if image.mode in ("I", "F"):
        extrema = image.getextrema()
        high = float(extrema[1]) if isinstance(extrema[1], int | float) else 0.0
        scale = 255 / high if high > 255 else 1.0
        return image.point(lambda value: value * scale).convert("L")
    if image.mode in ("P", "PA"):
        has_alpha = image.mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    if image.mode in ("RGBa", "La"):
        return image.convert("RGBA" if image.mode == "RGBa" else "LA")
    return image.convert("RGB")


def _encode(image: Image.Image, output_format: str, icc_profile: bytes | None) -> bytes:
    if output_format == "JPEG" and image.mode in ("LA", "RGBA"):
        # JPEG has no alpha channel, so transparent areas become white.
        opaque_mode = "L" if image.mode == "LA" else "RGB"
        background = Image.new(opaque_mode, image.size, "white")
        background.paste(image, mask=image.getchannel("A"))
        image = background
    if output_format == "WEBP" and image.mode in ("L", "LA"):
        image = image.convert("RGBA" if image.mode == "LA" else "RGB")
        # A greyscale ICC profile does not describe RGB pixels.
        icc_profile = None

    options = dict(_SAVE_OPTIONS[output_format])
    if icc_profile:
        options["icc_profile"] = icc_profile
    buffer = io.BytesIO()
    image.save(buffer, format=output_format, **options)
    return buffer.getvalue()


def _storage_client() -> StorageClient:
    # One client per process, because it is thread-safe and keeps a connection pool.
    # With STORAGE_EMULATOR_HOST set it uses anonymous credentials and the project
    # from GOOGLE_CLOUD_PROJECT (google-cloud-storage 2.x and 3.x).
    global _client
    with _client_lock:
        if _client is None:
            _client = StorageClient()
        return _client
