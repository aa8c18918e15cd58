"""``POST /v1/images/edits`` and ``/variations`` in-process (uvicorn + real Redis, no worker):
the multipart form is read as OpenAI defines it, bad forms get a 422 naming the field with
nothing queued, an OpenAI alpha mask becomes Sfumato's white-is-repainted mask, and the body
limit holds for multipart bodies (a maximum-size form fits, an oversized one is refused early).

The images themselves are made by the real worker in tests/e2e/test_openai_edits.py."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator

import httpx
import pytest
import redis
from PIL import Image

from api.app import create_app
from api.openai_compat import auto_size, white_repaint_mask
from core.config import Settings
from core.models import queue_name, resolve_model
from tests.conftest import SettingsFactory
from tests.support.api_server import serve_app
from tests.support.keys import bearer, create_key

UPLOAD_LIMIT = 64 * 1024  # small, so maximum-size forms are cheap to build


def png(width: int = 64, height: int = 64, mode: str = "RGB", color: object = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, format="PNG")  # type: ignore[arg-type]
    return out.getvalue()


def alpha_mask(width: int = 64, height: int = 64) -> bytes:
    """OpenAI's kind of mask: opaque, with the left half fully transparent (= to be edited)."""
    img = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def padded(data: bytes, size: int) -> bytes:
    """``data`` (a PNG) padded after its end to exactly ``size`` bytes; readers ignore the tail."""
    assert len(data) <= size
    return data + b"\0" * (size - len(data))


@pytest.fixture
def settings(make_settings: SettingsFactory, clean_redis: redis.Redis) -> Settings:
    return make_settings(
        rate_limit_rps=0, max_upload_bytes=UPLOAD_LIMIT, max_upload_pixels=128 * 128, max_n=4, openai_timeout_s=0.5
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with serve_app(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        http.headers.update(bearer(create_key(settings)))
        yield http


def queued(settings: Settings) -> int:
    return int(redis.Redis.from_url(settings.redis_url).llen(f"rq:queue:{queue_name(settings, 'tiny')}"))


Part = tuple[str, tuple[str | None, bytes]]


def form(data: dict[str, str], files: dict[str, tuple[str, bytes]] | list[Part] | None = None) -> list[Part]:
    """A multipart form's parts: text fields (no filename) then files, always multipart."""
    parts: list[Part] = [(name, (None, value.encode())) for name, value in data.items()]
    file_parts = files.items() if isinstance(files, dict) else (files or [])
    return parts + [(name, (filename, content)) for name, (filename, content) in file_parts]


def refused(client: httpx.Client, settings: Settings, path: str, **kwargs: object) -> dict[str, str]:
    """POST a body that must be refused with a 422; nothing may be queued. Returns the error."""
    resp = client.post(path, **kwargs)  # type: ignore[arg-type]
    assert resp.status_code == 422, resp.text
    assert queued(settings) == 0
    error: dict[str, str] = resp.json()["error"]
    return error


EDITS, VARIATIONS = "/v1/images/edits", "/v1/images/variations"


@pytest.mark.parametrize(
    ("path", "data", "files", "param", "words"),
    [
        (EDITS, {"prompt": "a fox"}, {}, "image", "required"),
        (VARIATIONS, {"n": "1"}, {}, "image", "required"),
        (EDITS, {"prompt": "a fox", "image": "aGVsbG8="}, {}, "image", "file part"),
        (EDITS, {}, {"image": ("a.png", png())}, "prompt", "required"),
        (EDITS, {"prompt": "x"}, {"image": ("a.txt", b"just some text")}, "image", "allowed formats"),
        (VARIATIONS, {}, {"image": ("a.gif", b"GIF89a" + b"\0" * 40)}, "image", "allowed formats"),
        (EDITS, {"prompt": "x"}, {"image": ("a.png", png()), "mask": ("m.png", alpha_mask(32, 32))}, "mask", "32x32"),
        (EDITS, {"prompt": "x"}, {"image": ("a.png", png()), "mask": ("m.txt", b"nope")}, "mask", "allowed formats"),
        (EDITS, {"prompt": "x", "n": "5"}, {"image": ("a.png", png())}, "n", "maximum is 4"),
        (VARIATIONS, {"n": "9"}, {"image": ("a.png", png())}, "n", "maximum is 4"),
        (EDITS, {"prompt": "x", "n": "two"}, {"image": ("a.png", png())}, "n", "integer"),
        (EDITS, {"prompt": "x", "size": "big"}, {"image": ("a.png", png())}, "size", "WIDTHxHEIGHT"),
        (EDITS, {"prompt": "x", "size": "1024x1024"}, {"image": ("a.png", png())}, "size", "maximum is 256"),
        (EDITS, {"prompt": "x", "response_format": "gif"}, {"image": ("a.png", png())}, "response_format", "url"),
        (EDITS, {"prompt": "x", "output_format": "svg"}, {"image": ("a.png", png())}, "output_format", "png"),
        (EDITS, {"prompt": "x", "stream": "true"}, {"image": ("a.png", png())}, "stream", "events"),
        (EDITS, {"prompt": "x", "frame_count": "3"}, {"image": ("a.png", png())}, "frame_count", "Extra inputs"),
        (EDITS, {"prompt": "x", "loras[][name]": "ink"}, {"image": ("a.png", png())}, "loras", "JSON text"),
        (EDITS, {"prompt": "x", "loras": "[{"}, {"image": ("a.png", png())}, "loras", "JSON text"),
        (EDITS, {"prompt": "x", "steps": "0"}, {"image": ("a.png", png())}, "steps", "greater than"),
        (VARIATIONS, {}, {"image": ("a.png", png()), "mask": ("m.png", alpha_mask())}, "mask", "no such file"),
        (EDITS, {"prompt": "x"}, {"image": ("a.png", png()), "markup": ("m.png", png())}, "markup", "no such file"),
        (EDITS, {"prompt": "x"}, {"image": ("a.png", padded(png(), UPLOAD_LIMIT + 1))}, "image", f"{UPLOAD_LIMIT}"),
        (EDITS, {"prompt": "x"}, {"image": ("a.png", png(200, 100))}, "image", "limit is 16384"),
    ],
)
def test_bad_forms_are_refused_naming_the_field(
    client: httpx.Client,
    settings: Settings,
    path: str,
    data: dict[str, str],
    files: dict[str, tuple[str, bytes]],
    param: str,
    words: str,
) -> None:
    error = refused(client, settings, path, files=form(data, files))
    assert error["code"] in ("invalid_request", "unknown_choice")
    assert error["param"] == param, error
    assert words in error["message"], error


def test_several_images_are_refused_whether_as_image_or_image_brackets(
    client: httpx.Client, settings: Settings
) -> None:
    two: list[Part] = [("image[]", ("a.png", png())), ("image[]", ("b.png", png()))]
    error = refused(client, settings, EDITS, files=form({"prompt": "x"}, two))
    assert error["param"] == "image" and "2 files" in error["message"]
    mixed: list[Part] = [("image", ("a.png", png())), ("image[]", ("b.png", png()))]
    assert refused(client, settings, EDITS, files=form({"prompt": "x"}, mixed))["param"] == "image"


def test_a_json_body_is_refused_naming_the_body(client: httpx.Client, settings: Settings) -> None:
    error = refused(client, settings, EDITS, json={"prompt": "x", "image": "aGVsbG8="})
    assert error["param"] == "body" and "multipart/form-data" in error["message"]


def test_a_field_sent_twice_is_refused(client: httpx.Client, settings: Settings) -> None:
    parts: list[Part] = [("prompt", (None, b"a")), ("prompt", (None, b"b")), ("image", ("a.png", png()))]
    assert refused(client, settings, EDITS, files=parts)["param"] == "prompt"


def test_forms_need_a_key_before_anything_is_read(settings: Settings) -> None:
    with serve_app(create_app(settings)) as url:
        resp = httpx.post(f"{url}{EDITS}", data={"prompt": "x"}, files={"image": ("a.png", png())}, timeout=30)
    assert resp.status_code == 401
    assert queued(settings) == 0


def test_a_valid_form_is_queued_through_the_normal_path(client: httpx.Client, settings: Settings) -> None:
    # No worker here: the synchronous wait ends in a 504 and the job is canceled, which proves the
    # form passed every check and was enqueued like any POST /v1/images.
    resp = client.post(EDITS, data={"prompt": "a fox", "seed": "3"}, files={"image": ("a.png", png())})
    assert resp.status_code == 504, resp.text
    job_id = resp.json()["error"]["message"].split("job ")[1].split(" ")[0]
    job = client.get(f"/v1/images/{job_id}").json()
    assert job["status"] == "canceled"


def test_a_maximum_size_form_fits_the_body_limit(client: httpx.Client, settings: Settings) -> None:
    # An image and a mask of exactly SFUMATO_MAX_UPLOAD_BYTES each, raw bytes (multipart sends no
    # base64): far under the computed body limit, which budgets the base64 of two uploads.
    image = padded(png(64, 64), UPLOAD_LIMIT)
    mask = padded(alpha_mask(64, 64), UPLOAD_LIMIT)
    request = client.build_request(
        "POST", EDITS, data={"prompt": "a fox"}, files={"image": ("a.png", image), "mask": ("m.png", mask)}
    )
    body = request.read()
    assert 2 * UPLOAD_LIMIT < len(body) < settings.resolved_max_body_bytes
    resp = client.send(request)
    assert resp.status_code == 504, resp.text  # passed the limit and every check; no worker


def test_an_oversized_form_is_refused_before_it_is_read(
    make_settings: SettingsFactory, clean_redis: redis.Redis
) -> None:
    settings = make_settings(rate_limit_rps=0, max_body_bytes=64 * 1024)
    token = create_key(settings)
    boundary = "sfumato-test-boundary"
    declared = 4 * 1024 * 1024
    head = (
        f"POST {EDITS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'.encode()
    with serve_app(create_app(settings)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(head + part + b"\0" * 8192)  # a small start of the 4 MiB declared
            answer = b""
            while data := sock.recv(65536):
                answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"code":"payload_too_large"' in answer
    assert queued(settings) == 0


def test_an_openai_alpha_mask_becomes_white_where_transparent() -> None:
    converted = white_repaint_mask(alpha_mask(64, 64))
    assert converted is not None
    mask = Image.open(io.BytesIO(converted))
    assert mask.mode == "L" and mask.size == (64, 64)
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((31, 63)) == 255  # transparent: repainted
    assert mask.getpixel((32, 0)) == 0 and mask.getpixel((63, 63)) == 0  # opaque: kept


def test_a_corrupt_alpha_mask_is_a_422_naming_the_mask(client: httpx.Client, settings: Settings) -> None:
    truncated = alpha_mask(64, 64)[:-40]  # the header is fine, the pixels are cut short
    files = {"image": ("a.png", png()), "mask": ("m.png", truncated)}
    error = refused(client, settings, EDITS, files=form({"prompt": "x"}, files))
    assert error["param"] == "mask" and "decoded" in error["message"]


def test_a_plain_or_opaque_mask_is_taken_as_it_is() -> None:
    assert white_repaint_mask(png(64, 64, "L", 255)) is None
    assert white_repaint_mask(png(64, 64, "RGB", (255, 255, 255))) is None
    assert white_repaint_mask(png(64, 64, "RGBA", (255, 255, 255, 255))) is None  # no transparency


def test_a_palette_mask_with_a_transparent_colour_is_converted() -> None:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 255, 255])
    img.paste(1, (0, 0, 8, 16))
    out = io.BytesIO()
    img.save(out, format="PNG", transparency=1)
    converted = white_repaint_mask(out.getvalue())
    assert converted is not None
    mask = Image.open(io.BytesIO(converted))
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((15, 0)) == 0


def test_the_automatic_size_is_the_image_size_fitted_to_the_model(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    tiny = resolve_model(settings, None)  # 64..256 px
    assert auto_size(64, 64, tiny, settings) == (64, 64)
    assert auto_size(100, 75, tiny, settings) == (96, 72)  # rounded down to multiples of 8
    assert auto_size(1024, 512, tiny, settings) == (256, 128)  # scaled to the largest side, aspect kept
    assert auto_size(20, 20, tiny, settings) == (64, 64)  # at least the smallest size
