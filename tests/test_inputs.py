"""inputs.py: paths, PIL images, numpy arrays and tensors become the pixels the file loader makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selfseg_fast.errors import ImageError
from selfseg_fast.images import LoadedImage, load_image
from selfseg_fast.inputs import as_image, as_images, names_per_image


@pytest.fixture()
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


def test_path_pil_array_and_tensor_give_the_same_pixels(tmp_path, rgb) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    tensor_chw = torch.from_numpy(rgb).permute(2, 0, 1)
    variants = [str(path), path, Image.open(path), rgb, tensor_chw, tensor_chw.float() / 255.0, rgb / 255.0]
    loaded, single = as_images(variants)
    assert not single and len(loaded) == len(variants)
    for image in loaded:
        assert image.rgb.dtype == np.uint8 and image.rgb.shape == (20, 30, 3)
        np.testing.assert_array_equal(image.rgb, rgb)
    assert loaded[2].path == str(path)  # a PIL image opened from a file keeps its name
    assert loaded[3].path == "image[3]"


def test_one_image_is_single_and_a_loaded_image_passes_through(rgb) -> None:
    loaded, single = as_images(rgb)
    assert single and len(loaded) == 1
    image = LoadedImage("x", rgb, "RGB", (30, 20))
    assert as_image(image) is image
    assert as_images([])[0] == []
    from_generator, single = as_images(array for array in (rgb, rgb[::-1]))
    assert not single and len(from_generator) == 2


def test_batches_of_arrays_and_tensors_are_split(rgb) -> None:
    batch = np.stack([rgb, rgb[::-1]])  # [B, H, W, C]
    loaded, single = as_images(batch)
    assert not single and len(loaded) == 2
    np.testing.assert_array_equal(loaded[1].rgb, rgb[::-1])
    tensors = torch.from_numpy(batch).permute(0, 3, 1, 2)  # [B, C, H, W]
    np.testing.assert_array_equal(as_images(tensors)[0][1].rgb, rgb[::-1])


def test_grayscale_rgba_and_16_bit_arrays_follow_the_file_rules(tmp_path) -> None:
    rng = np.random.default_rng(1)
    gray16 = rng.integers(0, 65536, (12, 16), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(as_image(gray16).rgb, load_image(tmp_path / "g16.png").rgb)

    gray = rng.integers(0, 256, (12, 16), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(as_image(gray).rgb, load_image(tmp_path / "g.png").rgb)
    np.testing.assert_array_equal(as_image(gray[:, :, None]).rgb, load_image(tmp_path / "g.png").rgb)

    rgba = rng.integers(0, 256, (12, 16, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(as_image(rgba).rgb, load_image(tmp_path / "a.png").rgb)
    transparent = rgba.copy()
    transparent[..., 3] = 0
    assert (as_image(transparent).rgb == 255).all()  # composited over white

    mask = np.zeros((4, 5), dtype=bool)
    mask[1, 2] = True
    assert as_image(mask).rgb[1, 2].tolist() == [255, 255, 255] and as_image(mask).rgb[0, 0].sum() == 0


def test_pil_images_get_exif_orientation_like_files(tmp_path, rgb) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    from_file = load_image(path).rgb
    assert from_file.shape == (30, 20, 3)
    np.testing.assert_array_equal(as_image(Image.open(path)).rgb, from_file)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"pixels": 1}, "unsupported input of type dict"),
        (np.zeros((4, 5, 7), np.uint8), "expected [H, W, 3]"),
        (np.full((4, 5, 3), 2.0), "float images must lie in [0, 1]"),
        (np.full((4, 5), np.nan), "NaN"),
        (np.full((4, 5), -3, np.int32), "outside 0..65535"),
        (np.zeros((0, 5, 3), np.uint8), "empty array"),
        (torch.zeros(5, 6, 7), "expected channels first"),
        ("no/such/file.jpg", "no such file"),
    ],
)
def test_unusable_inputs_are_one_line_errors(bad, message) -> None:
    with pytest.raises(ImageError) as info:
        as_images([np.zeros((4, 4, 3), np.uint8), bad])
    text = str(info.value)
    assert message in text and "\n" not in text
    if not isinstance(bad, str):
        assert text.startswith("image[1]")


def test_pixel_limit_applies_to_arrays(monkeypatch) -> None:
    monkeypatch.setenv("SELFSEG_MAX_PIXELS", "100")
    with pytest.raises(ImageError, match="exceeds the"):
        as_image(np.zeros((20, 20, 3), np.uint8))


def test_names_per_image() -> None:
    assert names_per_image(["car", "road"], 2) == [["car", "road"], ["car", "road"]]
    assert names_per_image([["car"], []], 2) == [["car"], []]
    with pytest.raises(ValueError, match="2 images but 3 name lists"):
        names_per_image([["a"], ["b"], ["c"]], 2)
    with pytest.raises(ValueError, match="not one string"):
        names_per_image("car,road", 1)
