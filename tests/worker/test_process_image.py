"""process_image against the Cloud Storage emulator, under functions-framework."""

from __future__ import annotations

import io
from typing import Any

import pytest
from google.cloud import storage
from PIL import Image

from tests.worker.conftest import (
    DeadLetterTopic,
    WorkerProcess,
    encode_task,
    pull_dead_letters,
    push_body,
)

EXIF_ORIENTATION = 0x0112
# EXIF orientation 6: the stored pixels must be turned 90 degrees clockwise.
ROTATE_CLOCKWISE = 6


def _jpeg_bytes(size: tuple[int, int], orientation: int | None = None) -> bytes:
    image = Image.new("RGB", size, "red")
    # A blue band along the left tenth marks which side ends up where.
    image.paste((0, 0, 255), (0, 0, size[0] // 10, size[1]))
    exif = image.getexif()
    if orientation is not None:
        exif[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def _png_bytes(size: tuple[int, int], mode: str = "RGBA") -> bytes:
    image = Image.new(mode, size, (0, 128, 0, 128) if mode == "RGBA" else 0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _image_task(bucket: str, source: str, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"bucket": bucket, "source": source, "sizes": [[64, 64]]}
    payload.update(fields)
    return {"task_type": "process_image", "payload": payload}


def _open_blob(bucket: storage.Bucket, name: str) -> tuple[Image.Image, storage.Blob]:
    blob = bucket.get_blob(name)
    assert blob is not None, f"gs://{bucket.name}/{name} was not written"
    return Image.open(io.BytesIO(blob.download_as_bytes())), blob


def _final_line(worker: WorkerProcess, message_id: str) -> dict[str, Any]:
    lines = worker.log_lines(message_id)
    assert lines, f"no log lines for {message_id}"
    assert "outcome" in lines[-1], f"no outcome line for {message_id}"
    return lines[-1]


def test_process_image_writes_thumbnails(
    worker: WorkerProcess, bucket: storage.Bucket, unique: str
) -> None:
    source = f"uploads/{unique}/photo.jpg"
    bucket.blob(source).upload_from_string(
        _jpeg_bytes((400, 200), orientation=ROTATE_CLOCKWISE), content_type="image/jpeg"
    )
    task = _image_task(
        bucket.name,
        source,
        sizes=[[64, 64], [300, 100]],
        output_prefix=f"thumbs/{unique}/",
    )
    message_id = f"image-ok-{unique}"

    response = worker.post_event(push_body(encode_task(task), message_id), message_id)

    assert response.status_code == 200, response.text
    # Upright the photo is 200x400, so it fits 64x64 as 32x64 and 300x100 as 50x100.
    expected = {f"thumbs/{unique}/photo_64x64.jpg": (32, 64)}
    expected[f"thumbs/{unique}/photo_300x100.jpg"] = (50, 100)
    for name, size in expected.items():
        image, blob = _open_blob(bucket, name)
        assert image.size == size
        assert image.format == "JPEG"
        assert blob.content_type == "image/jpeg"
        assert EXIF_ORIENTATION not in image.getexif()
    # After the clockwise turn the blue band runs along the top edge.
    upright, _ = _open_blob(bucket, f"thumbs/{unique}/photo_300x100.jpg")
    top_red, _, top_blue = upright.convert("RGB").getpixel((25, 4))
    bottom_red, _, bottom_blue = upright.convert("RGB").getpixel((25, 95))
    assert top_blue > 200
    assert top_red < 60
    assert bottom_red > 200
    assert bottom_blue < 60
    final = _final_line(worker, message_id)
    assert final["outcome"] == "success"
    assert final["outputs"] == [f"gs://{bucket.name}/{name}" for name in expected]


@pytest.mark.parametrize(
    ("output_format", "extension", "content_type"),
    [("PNG", "png", "image/png"), ("webp", "webp", "image/webp")],
)
def test_process_image_output_format(
    worker: WorkerProcess,
    bucket: storage.Bucket,
    unique: str,
    output_format: str,
    extension: str,
    content_type: str,
) -> None:
    source = f"uploads/{unique}/wide.jpg"
    bucket.blob(source).upload_from_string(_jpeg_bytes((1000, 250)))
    task = _image_task(
        bucket.name, source, format=output_format, output_prefix=f"{unique}/"
    )
    message_id = f"image-format-{unique}"

    response = worker.post_event(push_body(encode_task(task), message_id), message_id)

    assert response.status_code == 200, response.text
    image, blob = _open_blob(bucket, f"{unique}/wide_64x64.{extension}")
    assert image.size == (64, 16)
    assert image.format == output_format.upper()
    assert blob.content_type == content_type


def test_process_image_keeps_source_format(
    worker: WorkerProcess, bucket: storage.Bucket, unique: str
) -> None:
    source = f"uploads/{unique}/icon.png"
    bucket.blob(source).upload_from_string(_png_bytes((128, 128)))
    task = _image_task(bucket.name, source, output_prefix=f"{unique}/")
    message_id = f"image-png-{unique}"

    response = worker.post_event(push_body(encode_task(task), message_id), message_id)

    assert response.status_code == 200, response.text
    image, blob = _open_blob(bucket, f"{unique}/icon_64x64.png")
    assert image.format == "PNG"
    assert image.mode == "RGBA"
    assert image.getpixel((10, 10))[3] == 128
    assert blob.content_type == "image/png"


def test_process_image_never_enlarges(
    worker: WorkerProcess, bucket: storage.Bucket, unique: str
) -> None:
    source = f"uploads/{unique}/small.jpg"
    bucket.blob(source).upload_from_string(_jpeg_bytes((40, 20)))
    task = _image_task(bucket.name, source, output_prefix=f"{unique}/")
    message_id = f"image-small-{unique}"

    response = worker.post_event(push_body(encode_task(task), message_id), message_id)

    assert response.status_code == 200, response.text
    image, _ = _open_blob(bucket, f"{unique}/small_64x64.jpg")
    assert image.size == (40, 20)


def test_process_image_retry_overwrites(
    worker: WorkerProcess,
    bucket: storage.Bucket,
    storage_client: storage.Client,
    unique: str,
) -> None:
    source = f"uploads/{unique}/again.jpg"
    bucket.blob(source).upload_from_string(_jpeg_bytes((200, 200)))
    task = _image_task(bucket.name, source, output_prefix=f"{unique}/out/")
    data = encode_task(task)

    for attempt in (1, 2):
        message_id = f"image-retry-{unique}"
        body = push_body(data, message_id, delivery_attempt=attempt)
        response = worker.post_event(body, message_id)
        assert response.status_code == 200, response.text

    names = [blob.name for blob in storage_client.list_blobs(bucket, prefix=unique)]
    assert names == [f"{unique}/out/again_64x64.jpg"]


def test_missing_source_is_transient(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    bucket: storage.Bucket,
    unique: str,
) -> None:
    task = _image_task(bucket.name, f"uploads/{unique}/not-yet.jpg")
    message_id = f"image-missing-{unique}"

    response = worker.post_event(push_body(encode_task(task), message_id), message_id)

    assert response.status_code == 500
    final = _final_line(worker, message_id)
    assert final["outcome"] == "transient_failure"
    assert final["severity"] == "ERROR"
    assert final["error_type"] == "TransientError"
    assert final["known_transient"] is True
    assert "not found" in final["error"]
    assert "Traceback (most recent call last)" in final["message"]
    copies = pull_dead_letters(
        session_subscriber,
        dead_letter_topic.subscription,
        message_id,
        wait_seconds=1.0,
    )
    assert copies == []


def _large_png() -> bytes:
    # A bilevel image compresses to a few kilobytes however many pixels it has.
    image = Image.new("1", (8000, 7000), 0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


PERMANENT_SOURCES = [
    ("not_an_image", b"plain text, not pixels", "is not an image"),
    ("truncated_jpeg", _jpeg_bytes((300, 300))[:400], "could not be decoded"),
    ("too_many_pixels", _large_png(), "more than the 50000000 allowed"),
]


@pytest.mark.parametrize(
    ("case", "content", "detail"),
    PERMANENT_SOURCES,
    ids=[case[0] for case in PERMANENT_SOURCES],
)
def test_bad_source_dead_lettered(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    bucket: storage.Bucket,
    unique: str,
    case: str,
    content: bytes,
    detail: str,
) -> None:
    source = f"uploads/{unique}/{case}.jpg"
    bucket.blob(source).upload_from_string(content)
    task = _image_task(bucket.name, source, output_prefix=f"{unique}/")
    message_id = f"image-{case}-{unique}"

    response = worker.post_event(push_body(encode_task(task), message_id), message_id)

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    assert copies[0].attributes["taskctl_failure_reason"] == "permanent_error"
    assert detail in copies[0].attributes["taskctl_failure_detail"]
    assert list(bucket.list_blobs(prefix=f"{unique}/")) == []
    assert _final_line(worker, message_id)["outcome"] == "permanent_failure"


INVALID_PAYLOADS = [
    # (case id, payload fields replaced, field the detail must name)
    ("bucket_missing", {"bucket": None}, "payload.bucket"),
    ("bucket_invalid", {"bucket": "Not_A_Bucket!"}, "payload.bucket"),
    ("source_number", {"source": 12}, "payload.source"),
    ("source_folder", {"source": "uploads/"}, "payload.source"),
    ("sizes_empty", {"sizes": []}, "payload.sizes"),
    ("sizes_eleven", {"sizes": [[n, n] for n in range(1, 12)]}, "payload.sizes"),
    ("size_zero", {"sizes": [[64, 0]]}, "payload.sizes[0]"),
    ("size_too_big", {"sizes": [[64, 64], [4097, 10]]}, "payload.sizes[1]"),
    ("size_float", {"sizes": [[64.5, 64]]}, "payload.sizes[0]"),
    ("size_boolean", {"sizes": [[True, 64]]}, "payload.sizes[0]"),
    ("size_triple", {"sizes": [[1, 2, 3]]}, "payload.sizes[0]"),
    ("size_repeated", {"sizes": [[8, 8], [8, 8]]}, "payload.sizes[1]"),
    ("format_gif", {"format": "GIF"}, "payload.format"),
    ("prefix_number", {"output_prefix": 3}, "payload.output_prefix"),
    ("prefix_too_long", {"output_prefix": "p" * 1020}, "payload.output_prefix"),
    ("unknown_field", {"sise": [[1, 1]]}, "payload.sise"),
]


@pytest.mark.parametrize(
    ("case", "changes", "field"),
    INVALID_PAYLOADS,
    ids=[case[0] for case in INVALID_PAYLOADS],
)
def test_invalid_payload_names_field(
    worker: WorkerProcess,
    dead_letter_topic: DeadLetterTopic,
    session_subscriber,  # type: ignore[no-untyped-def]
    unique: str,
    case: str,
    changes: dict[str, Any],
    field: str,
) -> None:
    task = _image_task("worker-images", "uploads/photo.jpg")
    for key, value in changes.items():
        if value is None:
            del task["payload"][key]
        else:
            task["payload"][key] = value
    message_id = f"payload-{case}-{unique}"

    response = worker.post_event(push_body(encode_task(task), message_id), message_id)

    assert response.status_code == 200, response.text
    copies = pull_dead_letters(
        session_subscriber, dead_letter_topic.subscription, message_id
    )
    assert len(copies) == 1
    assert copies[0].attributes["taskctl_failure_reason"] == "invalid_payload"
    assert copies[0].attributes["taskctl_failure_detail"].startswith(f"{field}:")
