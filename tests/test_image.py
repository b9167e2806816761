"""Image preprocessing against the reference formula (PIL bicubic, /255, CLIP mean/std)."""

import io
import warnings

import jax
import numpy as np
import pytest
import torch
from PIL import Image

from bird_jax.config import get_preset
from bird_jax.data import image as image_lib
from bird_jax.data.image import png_bytes
from bird_jax_testing.images import png_header
from bird_jax_testing.records import synthetic_pixels


def _reference(data: bytes, size: int) -> np.ndarray:
  """Qwen-VL's transform written out: convert RGB, PIL bicubic, ToTensor, Normalize (torch)."""
  im = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BICUBIC)
  t = torch.from_numpy(np.array(im)).permute(2, 0, 1).to(torch.float32).div(255)
  mean = torch.tensor(image_lib.CLIP_MEAN)[:, None, None]
  std = torch.tensor(image_lib.CLIP_STD)[:, None, None]
  return ((t - mean) / std).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("gray", [False, True])
def test_host_device_and_reference_agree(gray):
  data = png_bytes(synthetic_pixels(7, 97, gray=gray))
  size = get_preset("tiny").vision.image_size
  pixels = image_lib.load_pixels(data, size)
  assert pixels.shape == (56, 56, 3) and pixels.dtype == np.uint8
  if gray:
    assert (pixels[..., 0] == pixels[..., 2]).all()
  ref = _reference(data, size)
  host = image_lib.normalize_np(pixels)
  dev = np.asarray(jax.jit(image_lib.normalize)(pixels))
  assert host.dtype == dev.dtype == np.float32
  np.testing.assert_array_equal(host, ref)
  np.testing.assert_allclose(dev, ref, rtol=0, atol=2e-6)
  np.testing.assert_array_equal(image_lib.preprocess(data, size), ref)
  # the formula itself, in float64, on a few values
  x = pixels[3, 5].astype(np.float64)
  want = (x / 255 - np.array(image_lib.CLIP_MEAN)) / np.array(image_lib.CLIP_STD)
  np.testing.assert_allclose(host[3, 5], want, rtol=1e-6)


def test_resize_is_pil_bicubic_ignoring_aspect():
  rgb = synthetic_pixels(1, 64)[:, :40]  # 40 wide x 64 high
  data = png_bytes(rgb)
  got = image_lib.load_pixels(data, 32)
  want = np.asarray(Image.fromarray(rgb).resize((32, 32), Image.BICUBIC))
  np.testing.assert_array_equal(got, want)
  assert not np.array_equal(got, np.asarray(Image.fromarray(rgb).resize((32, 32), Image.BILINEAR)))
  # already at the target size: untouched
  np.testing.assert_array_equal(image_lib.load_pixels(png_bytes(synthetic_pixels(2, 32)), 32),
                                synthetic_pixels(2, 32))


def test_16bit_png_min_max_stretch():
  a = np.array([[1000, 2000], [3000, 4000]], np.uint16)
  data = png_bytes(a)
  assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
  got = image_lib.load_pixels(data, 2)
  np.testing.assert_array_equal(got[..., 0], [[0, 85], [170, 255]])
  assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
  flat = png_bytes(np.full((4, 4), 3000, np.uint16))
  assert (image_lib.load_pixels(flat, 4) == 0).all()


def test_alpha_palette_and_binary_like_reference():
  rgba = np.dstack([synthetic_pixels(3, 16), np.full((16, 16), 7, np.uint8)])
  for im in (Image.fromarray(rgba), Image.fromarray(synthetic_pixels(4, 16)).convert("P"),
             Image.fromarray(synthetic_pixels(5, 16, gray=True)).convert("1")):
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    got = image_lib.load_pixels(buf.getvalue(), 16)
    np.testing.assert_array_equal(got, np.asarray(im.convert("RGB")))


def test_corrupt_image_error_names_it():
  data = png_bytes(synthetic_pixels(0, 32))
  with pytest.raises(image_lib.ImageDecodeError, match="ct_000001.png"):
    image_lib.load_pixels(data[: len(data) // 2], 16, name="ct_000001.png")
  with pytest.raises(image_lib.ImageDecodeError, match="x.png"):
    image_lib.load_pixels(b"not an image", 16, name="x.png")


def test_a_header_claiming_too_many_pixels_is_too_large_not_corrupt():
  bomb = png_header(20000, 20000)  # 400 million pixels: PIL refuses it from the header
  with pytest.raises(image_lib.ImageTooLarge, match=r"bomb.png: the image's header declares "
                     r"400,000,000 pixels, more than the limit 16,777,216"):
    image_lib.decode(bomb, "bomb.png", max_pixels=4096 * 4096)
  with pytest.raises(image_lib.ImageTooLarge, match="more than the limit 178,956,970"):
    image_lib.decode(bomb, "bomb.png")  # PIL's own limit
  with pytest.warns(Image.DecompressionBombWarning):  # PIL warns, the caller's limit refuses
    with pytest.raises(image_lib.ImageTooLarge, match="10000x10000 = 100,000,000 pixels"):
      image_lib.decode(png_header(10000, 10000), "big.png", max_pixels=4096 * 4096)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # where warnings are errors, PIL's warning is raised
    with pytest.raises(image_lib.ImageTooLarge, match="declares 100,000,000 pixels, more than "
                       "the limit 89,478,485"):
      image_lib.decode(png_header(10000, 10000), "big.png")
