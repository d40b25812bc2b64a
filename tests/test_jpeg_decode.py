"""The JPEG fast path (simplejpeg / libjpeg-turbo): PIL's pixels exactly, PIL as the fallback."""

from __future__ import annotations

import importlib.util
import io
import sys

import numpy as np
import pytest
from PIL import Image

from synthface.pipeline.errors import ConfigError, InputError
from synthface.pipeline.shards import decode_image, sample
from synthface.pipeline.shards import jpeg as jpeg_mod
from synthface.pipeline.world import make_world_dataset

needs_simplejpeg = pytest.mark.skipif(
    importlib.util.find_spec("simplejpeg") is None, reason="simplejpeg is not installed"
)


@pytest.fixture(autouse=True)
def _fresh_setting(monkeypatch):
    monkeypatch.delenv(jpeg_mod.DECODER_ENV, raising=False)
    jpeg_mod._resolve.cache_clear()
    yield
    jpeg_mod._resolve.cache_clear()


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> list[np.ndarray]:
    from synthface.pipeline.shards import iter_samples

    root = tmp_path_factory.mktemp("jpeg") / "ds"
    make_world_dataset(root, identities=3, per_identity=2, size=48)
    return [s["image"] for s in iter_samples(root)]


def _jpeg(img: np.ndarray, mode: str = "RGB", **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, "JPEG", **options)
    return buf.getvalue()


def _pil(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


VARIANTS = {
    "q95 4:2:0": {"quality": 95, "subsampling": 2},
    "q95 4:4:4": {"quality": 95, "subsampling": 0},
    "q75 4:2:2": {"quality": 75, "subsampling": 1},
    "progressive": {"quality": 90, "progressive": True},
}


@needs_simplejpeg
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_path_gives_pils_pixels_exactly(faces, variant, monkeypatch):
    def no_pil(*args, **kwargs):
        raise AssertionError("PIL was used")

    monkeypatch.setattr(sample, "open_image", no_pil)  # the fast path must decode these
    for img in faces:
        data = _jpeg(img, **VARIANTS[variant])
        out = decode_image(data, "face.jpg")
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert np.array_equal(out, _pil(data))  # tolerance 0 (docs/training.md)


@needs_simplejpeg
def test_greyscale_is_replicated_like_pil(faces):
    data = _jpeg(faces[0], "L", quality=95)
    out = decode_image(data)
    assert out.shape == faces[0].shape and np.array_equal(out, _pil(data))


@needs_simplejpeg
def test_cmyk_and_png_go_to_pil(faces, monkeypatch):
    calls = []
    real = sample.open_image
    monkeypatch.setattr(sample, "open_image", lambda *a: calls.append(1) or real(*a))
    cmyk = _jpeg(faces[0], "CMYK", quality=95)
    assert np.array_equal(decode_image(cmyk), _pil(cmyk))
    png = io.BytesIO()
    Image.fromarray(faces[1]).save(png, "PNG")
    assert np.array_equal(decode_image(png.getvalue()), faces[1])
    assert len(calls) == 2


def test_missing_package_falls_back_to_pil(faces, monkeypatch):
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import raises ImportError
    assert jpeg_mod.jpeg_decoder() == "pil"
    data = _jpeg(faces[0], quality=95)
    assert np.array_equal(decode_image(data), _pil(data))
    monkeypatch.setenv(jpeg_mod.DECODER_ENV, "simplejpeg")
    with pytest.raises(ConfigError, match="SYNTHFACE_JPEG_DECODER=simplejpeg but simplejpeg is"):
        decode_image(data)


@needs_simplejpeg
def test_setting_is_checked_and_pil_can_be_forced(faces, monkeypatch):
    assert jpeg_mod.jpeg_decoder() == "simplejpeg"
    monkeypatch.setenv(jpeg_mod.DECODER_ENV, "turbo")
    with pytest.raises(ConfigError, match=r"SYNTHFACE_JPEG_DECODER='turbo': must be auto"):
        jpeg_mod.jpeg_decoder()
    monkeypatch.setenv(jpeg_mod.DECODER_ENV, "pil")
    assert jpeg_mod.jpeg_decoder() == "pil"
    assert jpeg_mod.decode_jpeg(_jpeg(faces[0]), "x") is None


@needs_simplejpeg
def test_pixel_limit_and_corrupt_data_fail_like_pil(faces, monkeypatch):
    data = _jpeg(faces[0], quality=95)
    monkeypatch.setenv("SYNTHFACE_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(InputError, match=r"face\.jpg: image is 48x48 = 2304 pixels, above"):
        decode_image(data, "face.jpg")
    monkeypatch.delenv("SYNTHFACE_MAX_IMAGE_PIXELS")
    with pytest.raises(InputError, match=r"cut\.jpg: cannot decode image"):
        decode_image(data[: len(data) // 2], "cut.jpg")
