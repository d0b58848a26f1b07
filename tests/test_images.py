"""Every kind of input a user throws at the loader: formats, modes, orientation, sizes, broken files."""

from __future__ import annotations

import io
import logging
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from selfseg_fast.errors import ImageError, ResourceError, SelfSegError
from selfseg_fast.images import display_path, iter_image_paths, load_image, load_image_bytes, load_images


@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "bmp", "tiff", "gif"])
def test_formats_load_as_rgb8(tmp_path, ext):
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[:, :15] = (200, 30, 30)
    path = tmp_path / f"im.{ext}"
    Image.fromarray(rgb).save(path)
    out = load_image(path)
    assert out.rgb.shape == (20, 30, 3) and out.rgb.dtype == np.uint8
    assert abs(int(out.rgb[10, 5, 0]) - 200) < 12  # lossy formats stay close


def test_gif_takes_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert load_image(path).rgb[0, 0, 0] > 200


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr", "LA", "RGBA"])
def test_modes(tmp_path, mode):
    image = Image.new("RGB", (10, 6), (10, 120, 240)).convert(mode)
    ext = "jpg" if mode in ("CMYK", "YCbCr") else "tiff" if mode == "LA" else "png"
    path = tmp_path / f"m.{ext}"
    image.save(path)
    out = load_image(path)
    assert out.rgb.shape == (6, 10, 3) and out.original_mode in (mode, "RGB", "L")


def test_rgba_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, :2, 3] = 255  # left half opaque red, right half fully transparent
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = load_image(path).rgb
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 3]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.info["transparency"] = 1
    path = tmp_path / "p.png"
    image.save(path, transparency=1)
    assert tuple(load_image(path).rgb[0, 0]) == (255, 255, 255)


def test_16bit_scaled_by_bit_depth(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    out = load_image(path).rgb
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_float_scaled_by_range(tmp_path):
    values = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    path = tmp_path / "f.tiff"
    Image.fromarray(values, "F").save(path)
    assert load_image(path).rgb[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_applied(tmp_path):
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 5, 10))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "rot.jpg"
    image.save(path, exif=exif, quality=95)
    out = load_image(path)
    assert out.rgb.shape == (30, 10, 3)
    assert out.original_size == (30, 10)
    assert out.rgb[0, :, 0].mean() > 200  # the left strip is now on top


def test_one_pixel_and_large(tmp_path):
    Image.new("RGB", (1, 1), (5, 6, 7)).save(tmp_path / "px.png")
    assert load_image(tmp_path / "px.png").rgb.shape == (1, 1, 3)
    Image.new("RGB", (6000, 4000)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png").rgb.shape == (4000, 6000, 3)


def test_decompression_bomb_refused(tmp_path):
    Image.new("L", (300, 300)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(tmp_path / "bomb.png", limit_pixels=10_000)


def _one_line_naming(exc: ImageError, path) -> None:
    text = str(exc)
    assert "\n" not in text and str(path) in text


def test_broken_inputs_give_one_line(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "JPEG")
    cases = {
        "truncated.jpg": good.getvalue()[: len(good.getvalue()) // 2],
        "text.jpg": b"this is not an image",
        "empty.png": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for name in cases:
        with pytest.raises(ImageError) as info:
            load_image(tmp_path / name)
        _one_line_naming(info.value, tmp_path / name)
    for missing in (tmp_path / "nope.png", tmp_path):
        with pytest.raises(ImageError) as info:
            load_image(missing)
        _one_line_naming(info.value, missing)


def test_folder_expansion_and_partial_failure(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "bad.png").write_bytes(b"junk")
    paths = iter_image_paths([tmp_path])
    assert [p.name for p in paths] == ["a.jpg", "b.png", "bad.png"]
    loaded = load_images(paths)
    assert isinstance(loaded[2], ImageError) and loaded[0].rgb.shape == (4, 4, 3)


def test_folder_without_images_is_a_one_line_error_before_any_work(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ImageError) as info:
        iter_image_paths([tmp_path / "a.png", tmp_path / "empty"])
    _one_line_naming(info.value, tmp_path / "empty")
    assert "no image files" in str(info.value)


# ---- issue 13.19: limits, special files, warnings, odd names ------------------------------------------
def test_selfseg_max_pixels_can_raise_the_limit_above_pillows_own(tmp_path, monkeypatch):
    Image.new("L", (300, 300)).save(tmp_path / "wide.png")  # 90,000 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow alone refuses > 20,000 px
    monkeypatch.setenv("SELFSEG_MAX_PIXELS", "100000")
    assert load_image(tmp_path / "wide.png").rgb.shape == (300, 300, 3)
    monkeypatch.setenv("SELFSEG_MAX_PIXELS", "50000")
    with pytest.raises(ImageError, match="exceeds the 0 MPix limit") as info:
        load_image(tmp_path / "wide.png")
    assert isinstance(info.value, ResourceError)  # services answer it with 413
    monkeypatch.setenv("SELFSEG_MAX_PIXELS", "lots")
    with pytest.raises(SelfSegError, match="SELFSEG_MAX_PIXELS"):
        load_image(tmp_path / "wide.png")


def test_symlinked_folders_are_followed_and_odd_entries_reported(tmp_path, caplog):
    root, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    Image.new("RGB", (4, 4)).save(root / "a.png")
    Image.new("RGB", (4, 4)).save(elsewhere / "b.png")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    os.mkfifo(root / "pipe.png")
    with caplog.at_level(logging.WARNING, logger="selfseg_fast"):
        paths = iter_image_paths([root])
    names = sorted(p.name for p in paths)
    assert names == ["a.png", "b.png", "dangling.jpg", "pipe.png"]  # the link loop is read once
    assert any("loop" in r.getMessage() and "already read" in r.getMessage() for r in caplog.records)
    with pytest.raises(ImageError, match="dangling symbolic link") as info:
        load_image(root / "dangling.jpg")
    _one_line_naming(info.value, root / "dangling.jpg")
    with pytest.raises(ImageError, match=r"not a regular file \(a FIFO\)"):
        load_image(root / "pipe.png")  # returns at once: a FIFO is never opened
    assert iter_image_paths([root], exclude=[elsewhere]) == sorted(
        p for p in paths if p.parent.name != "linked"
    )


def test_decoder_warnings_become_one_line_naming_the_file(tmp_path, caplog):
    Image.new("RGB", (8, 8)).save(tmp_path / "exif.jpg", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff")
    Image.fromarray(np.array([[-1.0, 0.0, np.inf]], np.float32), "F").save(tmp_path / "inf.tiff")
    log_level = caplog.at_level(logging.WARNING, logger="selfseg_fast")
    with log_level, warnings.catch_warnings(record=True) as leaked:
        for name in ("exif.jpg", "inf.tiff", "exif.jpg"):
            load_image(tmp_path / name)
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith(f"{tmp_path / 'exif.jpg'}: UserWarning: Corrupt EXIF") for line in lines) == 2
    assert any(line.startswith(f"{tmp_path / 'inf.tiff'}: RuntimeWarning: overflow") for line in lines)
    assert all("\n" not in line for line in lines)
    assert not leaked  # nothing reached the multi-line warnings display


def test_a_newline_in_a_file_name_never_splits_the_error_line(tmp_path):
    odd = tmp_path / "two\nlines.png"
    odd.write_bytes(b"not an image")
    with pytest.raises(ImageError) as info:
        load_image(odd)
    text = str(info.value)
    assert "\n" not in text and "two\\nlines.png" in text
    assert display_path("a\tb\x1b.png") == "a\\tb\\x1b.png" and display_path("café.png") == "café.png"


def test_bytes_upload_decodes_like_a_file():
    buffer = io.BytesIO()
    Image.new("RGB", (5, 3), (9, 8, 7)).save(buffer, "PNG")
    assert load_image_bytes(buffer.getvalue(), "upload.png").rgb.shape == (3, 5, 3)
    with pytest.raises(ImageError, match="upload.bin: not an image"):
        load_image_bytes(b"nope", "upload.bin")
