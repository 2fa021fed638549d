"""Tests for segeig.imageio (robust image reading), segeig.labelmaps (label reading,
segment maps written and read back) and segeig.data.files (listing)."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
from PIL import Image

from segeig.data.files import IMAGE_EXTENSIONS, list_images
from segeig.imageio import ImageReadError, read_image
from segeig.labelmaps import read_label, read_segments, save_segments
from segeig.viz import make_palette


def _check_rgb(a: np.ndarray, shape: tuple[int, int]) -> None:
    assert a.shape == (*shape, 3) and a.dtype == np.uint8 and a.flags.c_contiguous


def test_exif_orientation_is_applied(tmp_path):
    # Stored 10 high x 20 wide: left half red, right half blue.
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = (255, 0, 0)
    a[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    p = tmp_path / "rot.jpg"
    Image.fromarray(a).save(p, exif=exif, quality=95)
    out = read_image(p)
    _check_rgb(out, (20, 10))
    # After a clockwise turn the stored left (red) half is on top.
    assert out[2, 5, 0] > 200 and out[2, 5, 2] < 60
    assert out[17, 5, 2] > 200 and out[17, 5, 0] < 60
    _check_rgb(read_image(p, apply_exif=False), (10, 20))


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale(tmp_path, mode):
    a = np.zeros((6, 8), np.uint8)
    a[:, 4:] = 255
    p = tmp_path / "g.png"
    Image.fromarray(a).convert(mode).save(p)
    out = read_image(p)
    _check_rgb(out, (6, 8))
    assert (out[:, :4] == 0).all() and (out[:, 4:] == 255).all()


def test_rgba_and_la_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255  # red ...
    a[:2, :, 3] = 255  # ... opaque on the top half, transparent below
    Image.fromarray(a).save(tmp_path / "a.png")  # 4 channels -> RGBA
    out = read_image(tmp_path / "a.png")
    _check_rgb(out, (4, 4))
    assert (out[:2] == (255, 0, 0)).all() and (out[2:] == 255).all()
    la = np.stack([np.zeros((4, 4), np.uint8), np.full((4, 4), 0, np.uint8)], -1)
    la[:, :2, 1] = 255
    Image.fromarray(la).save(tmp_path / "la.png")  # 2 channels -> LA
    out = read_image(tmp_path / "la.png")
    assert (out[:, :2] == 0).all() and (out[:, 2:] == 255).all()


def test_palette_with_and_without_transparency(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    im = Image.fromarray(idx).convert("P")
    im.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 0] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 1]) == (200, 100, 0)
    im.save(tmp_path / "pt.png", transparency=2)
    out = read_image(tmp_path / "pt.png")
    assert tuple(out[1, 0]) == (255, 255, 255) and tuple(out[0, 0]) == (10, 20, 30)


def test_16bit_grey_png_and_tiff_scaled_not_clipped(tmp_path):
    a = np.array([[0, 65535], [32896, 257 * 100]], np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), a)
    Image.fromarray(a).save(tmp_path / "g16.tif")
    for name in ("g16.png", "g16.tif"):
        out = read_image(tmp_path / name)
        _check_rgb(out, (2, 2))
        assert out[..., 0].tolist() == [[0, 255], [128, 100]], name


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour_full_depth(tmp_path, ext):
    rgb = np.zeros((3, 5, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 257 * 100, 200  # 200 -> rounds to 1
    p = tmp_path / f"c16{ext}"
    cv2.imwrite(str(p), rgb[..., ::-1])  # OpenCV writes BGR
    out = read_image(p)
    _check_rgb(out, (3, 5))
    assert tuple(out[1, 2]) == (255, 100, 1)


def test_16bit_rgba_png_on_white(tmp_path):
    bgra = np.zeros((2, 2, 4), np.uint16)
    bgra[0, :, 3] = 65535  # top row opaque black, bottom transparent
    cv2.imwrite(str(tmp_path / "c16a.png"), bgra)
    out = read_image(tmp_path / "c16a.png")
    assert (out[0] == 0).all() and (out[1] == 255).all()


@pytest.mark.parametrize("ext", [".webp", ".bmp", ".tiff", ".jpeg", ".PNG"])
def test_common_formats(tmp_path, ext):
    a = np.zeros((8, 12, 3), np.uint8)
    a[..., 1] = 200
    p = tmp_path / f"x{ext}"
    kw = {"lossless": True} if ext == ".webp" else {}
    Image.fromarray(a).save(p, format={".PNG": "PNG"}.get(ext), **kw)
    out = read_image(p)
    _check_rgb(out, (8, 12))
    assert abs(int(out[4, 6, 1]) - 200) <= 3 and out[4, 6, 0] <= 3


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (6, 4), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    out = read_image(tmp_path / "cmyk.jpg")
    _check_rgb(out, (4, 6))
    assert out.min() > 240  # no ink = white


def _assert_read_error(path, needle: str = "") -> ImageReadError:
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    msg = str(ei.value)
    assert str(path) in msg and needle in msg
    assert isinstance(ei.value, ValueError) and ei.value.path == path
    return ei.value


def test_errors_name_the_file(tmp_path):
    _assert_read_error(tmp_path / "missing.jpg", "does not exist")
    (tmp_path / "empty.png").write_bytes(b"")
    _assert_read_error(tmp_path / "empty.png", "empty")
    (tmp_path / "junk.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    _assert_read_error(tmp_path / "junk.jpg", "not a recognised image")
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for ext in (".jpg", ".png"):
        full = tmp_path / f"full{ext}"
        Image.fromarray(noisy).save(full)
        cut = tmp_path / f"cut{ext}"
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        _assert_read_error(cut)


def test_decompression_bomb_guard(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_image(tmp_path / "big.png", max_pixels=1000)
    assert read_image(tmp_path / "big.png", max_pixels=None).shape == (30, 40, 3)


def test_error_pickles():
    e = ImageReadError("/x/y.png", "broken", "fix it")
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and e2.path == e.path


def test_read_label_keeps_palette_indices(tmp_path):
    idx = np.array([[0, 1, 2], [150, 255, 7]], np.uint8)
    im = Image.fromarray(idx).convert("P")
    im.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    im.save(tmp_path / "p.png")
    out = read_label(tmp_path / "p.png")
    assert out.dtype == np.uint8 and out.shape == (2, 3) and (out == idx).all()
    Image.fromarray(idx).save(tmp_path / "l.png")
    assert (read_label(tmp_path / "l.png") == idx).all()
    cv2.imwrite(str(tmp_path / "l16.png"), idx.astype(np.uint16))
    assert (read_label(tmp_path / "l16.png") == idx).all()


def test_read_label_rejects_colour_and_out_of_range(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match="colour-coded"):
        read_label(tmp_path / "rgb.png")
    cv2.imwrite(str(tmp_path / "big16.png"), np.full((2, 2), 300, np.uint16))
    with pytest.raises(ImageReadError, match="outside uint8"):
        read_label(tmp_path / "big16.png")
    grey_rgb = np.repeat(np.array([[3, 4]], np.uint8)[..., None], 3, 2)
    Image.fromarray(grey_rgb).save(tmp_path / "grey_rgb.png")
    assert read_label(tmp_path / "grey_rgb.png").tolist() == [[3, 4]]


def test_list_images(tmp_path):
    for rel in ["b.jpg", "a.PNG", "sub/c.webp", "sub/deep/d.tiff", "notes.txt",
                ".hidden.jpg", ".cache/e.jpg", "sub/._f.jpg"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    rel = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert rel == ["a.PNG", "b.jpg", "sub/c.webp", "sub/deep/d.tiff"]
    flat = [p.name for p in list_images(tmp_path, recursive=False)]
    assert flat == ["a.PNG", "b.jpg"]
    assert list_images(tmp_path / "b.jpg") == [tmp_path / "b.jpg"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)


@pytest.mark.parametrize("num_segments", [1, 12, 256, 300, 512])
def test_label_png_round_trips(tmp_path, num_segments):
    rng = np.random.default_rng(num_segments)
    labels = rng.integers(0, num_segments, (17, 23))
    labels[0, 0] = num_segments - 1  # the largest id, 255 when S = 256
    path = tmp_path / "l.png"
    save_segments(labels, path, num_segments)
    np.testing.assert_array_equal(read_segments(path), labels)
    with Image.open(path) as img:
        assert img.mode == ("P" if num_segments <= 256 else "I;16")
        if img.mode == "P":
            # Id 255 is a segment like any other: it keeps its colour, not "ignore" black.
            palette = np.array(img.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
            np.testing.assert_array_equal(palette[:num_segments], make_palette(num_segments))


def test_label_png_rejects_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        save_segments(np.array([[0, 5]]), tmp_path / "l.png", 5)
    with pytest.raises(ValueError, match="num_segments"):
        save_segments(np.zeros((2, 2), int), tmp_path / "l.png", 70000)
    assert not (tmp_path / "l.png").exists()


def test_segment_png_uses_the_given_palette_and_overwrites_in_place(tmp_path):
    labels = np.arange(12).reshape(3, 4)
    colours = np.array([[i, 2 * i, 255 - i] for i in range(12)], np.uint8)
    path = tmp_path / "sub" / "labels.png"
    save_segments(labels, path, 12, colours)
    with Image.open(path) as img:
        palette = np.array(img.getpalette()[: 3 * 12], np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette, colours)
    save_segments(labels[::-1], path, 12)  # overwrite: default palette, new ids
    np.testing.assert_array_equal(read_segments(path), labels[::-1])
    assert [p.name for p in path.parent.iterdir()] == ["labels.png"]  # no temp left over


def test_read_segments_refuses_colour_pngs(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="mode"):
        read_segments(tmp_path / "rgb.png")


# -- hardening (issue 15): formats, memory, decoding at a reduced size ----------------
def _peak_bytes_per_pixel(path, pixels: int, **kwargs) -> float:
    """Peak RSS growth of ``read_image(path, **kwargs)`` in a fresh process, per ``pixels``."""
    import subprocess
    import sys

    # VmHWM, the peak RSS of this process image (ru_maxrss would start at the
    # parent's peak: it survives fork and exec).
    code = (
        "import re\n"
        "from segeig.imageio import read_image\n"
        "def peak():\n"
        "    status = open('/proc/self/status').read()\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)) * 1024\n"
        "before = peak()\n"
        f"image = read_image({str(path)!r}, **{kwargs!r})\n"
        "print(image.shape[0], image.shape[1], peak() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    return int(out[2]) / pixels, (int(out[0]), int(out[1]))


def test_transparent_png_decodes_in_a_few_bytes_per_pixel(tmp_path):
    """Regression: an RGBA PNG peaked at ~55 bytes per pixel (float copies)."""
    path = tmp_path / "bomb.png"
    Image.new("RGBA", (3000, 3000), (10, 20, 30, 128)).save(path)
    per_pixel, shape = _peak_bytes_per_pixel(path, 3000 * 3000)
    assert shape == (3000, 3000)
    assert per_pixel < 12, f"{per_pixel:.1f} bytes per pixel"
    # And the same values as compositing in float: round(c·a/255 + 255·(1 − a/255)).
    small = tmp_path / "small.png"
    Image.new("RGBA", (3, 2), (10, 20, 30, 128)).save(small)
    expected = np.rint(np.array([10, 20, 30]) * 128 / 255 + 255 * (1 - 128 / 255))
    assert (read_image(small) == expected.astype(np.uint8)).all()


def test_jpeg_decodes_straight_to_the_requested_size(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (200, 100, 50)).save(path, quality=90)
    per_pixel, shape = _peak_bytes_per_pixel(path, 4000 * 3000, max_side=500)
    assert shape == (375, 500)
    # A full decode holds >= 7 bytes per pixel (PIL's buffer + the RGB array);
    # DCT scaling to 1/4 decodes 1/16 of the pixels.
    assert per_pixel < 1.5, f"{per_pixel:.2f} bytes per full-size pixel"


@pytest.mark.parametrize(("kwargs", "shape"), [
    ({"max_side": 50}, (25, 50)), ({"short_side": 20}, (20, 40)),
    ({"max_side": 50, "short_side": 10}, (10, 20)), ({"max_side": 500}, (60, 120)),
])
def test_read_image_downscales_to_the_requested_size(tmp_path, kwargs, shape):
    rng = np.random.default_rng(0)
    a = np.repeat(np.repeat(rng.integers(0, 256, (6, 12, 3), dtype=np.uint8), 10, 0), 10, 1)
    for ext in (".png", ".jpg"):
        Image.fromarray(a).save(tmp_path / f"a{ext}", quality=95)
        out = read_image(tmp_path / f"a{ext}", **kwargs)
        _check_rgb(out, shape)
        assert out.flags.writeable
        reference = cv2.resize(a, shape[::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(out.astype(int) - reference).mean() < 12


def test_read_image_downscales_after_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide x 20 high, shown 20 wide x 40 high
    Image.new("RGB", (40, 20), (0, 128, 0)).save(tmp_path / "r.jpg", exif=exif)
    _check_rgb(read_image(tmp_path / "r.jpg", max_side=10), (10, 5))


def test_formats_outside_the_allow_list_are_refused_before_decoding(tmp_path, monkeypatch):
    """Regression: an EPS named .png was opened as EPS (and looked for Ghostscript)."""
    from PIL import EpsImagePlugin

    loaded = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "load",
                        lambda self, *a, **k: loaded.append(self) or None)
    path = tmp_path / "innocent.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
                     b"0 0 moveto 10 10 lineto stroke\n%%EOF\n")
    error = _assert_read_error(path, "not a recognised image format")
    assert "JPEG" in error.reason and not loaded
    with pytest.raises(ImageReadError):
        read_label(path)


def test_image_size_reads_only_the_header(tmp_path):
    from segeig.imageio import image_size

    Image.new("RGB", (70, 30)).save(tmp_path / "a.png")
    assert image_size(tmp_path / "a.png") == (70, 30)
    (tmp_path / "b.png").write_bytes(b"nope")
    with pytest.raises(ImageReadError):
        image_size(tmp_path / "b.png")
