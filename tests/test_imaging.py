"""Image decoding/encoding: every mode, EXIF orientations, ICC, 16-bit, and the bad-input
corpus, each with its own clear error."""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from srdeploy.io import imaging, png
from srdeploy.io.imaging import ImageError, Picture

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _bytes(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def _rgb(rng, h=23, w=31) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


# --- modes ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_lossless_round_trip_keeps_pixels_and_mode(mode, rng):
    src = Image.fromarray(rng.integers(0, 256, (17, 29, 4), dtype=np.uint8)).convert(mode)
    pic = imaging.decode(_bytes(src, "PNG"), "in.png")
    again = Image.open(io.BytesIO(imaging.encode(pic, "PNG")))
    assert again.mode == mode
    assert np.array_equal(np.asarray(again), np.asarray(src))
    assert pic.gray == (mode in ("L", "LA")) and (pic.alpha is not None) == mode.endswith("A")


def test_palette_without_transparency_becomes_rgb(rng):
    src = Image.fromarray(_rgb(rng)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pic = imaging.decode(_bytes(src, "PNG"), "p.png")
    assert pic.color.shape == (23, 31, 3) and pic.alpha is None
    assert np.array_equal(pic.color, np.asarray(src.convert("RGB")))


def test_palette_with_transparency_becomes_rgba(rng):
    src = Image.fromarray(_rgb(rng)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    data = _bytes(src, "PNG", transparency=3)
    pic = imaging.decode(data, "p.png")
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
    assert np.array_equal(pic.alpha, expected[..., 3]) and (pic.alpha == 0).any()
    assert imaging.choose_format("jpg", imaging.probe(data, "p.png"))[0] == "PNG"  # alpha kept


def test_gray_palette_gif_stays_gray(rng):
    src = Image.fromarray(rng.integers(0, 256, (12, 14), dtype=np.uint8)).convert("P")
    src.putpalette([v for i in range(256) for v in (i, i, i)])
    pic = imaging.decode(_bytes(src, "GIF"), "g.gif")
    assert pic.gray and pic.source_format == "GIF"
    assert imaging.choose_format("same", pic) == ("PNG", "GIF input written as PNG")


def test_bilevel_and_ycbcr_are_converted(rng):
    assert imaging.decode(_bytes(Image.fromarray(_rgb(rng)).convert("1"), "PNG"), "b.png").gray
    ycc = imaging.picture_from_pil(Image.fromarray(_rgb(rng)).convert("YCbCr"))
    assert ycc.color.shape == (23, 31, 3)


def test_cmyk_jpeg_is_converted_to_rgb_and_drops_the_cmyk_profile(rng):
    src = Image.fromarray(_rgb(rng)).convert("CMYK")
    data = _bytes(src, "JPEG", quality=95)
    pic = imaging.decode(data, "c.jpg")
    assert pic.color.shape == (23, 31, 3) and pic.icc_profile is None
    assert np.array_equal(pic.color, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_cmyk_with_a_profile_goes_through_colour_management(rng, monkeypatch):
    """No CMYK profile ships with Pillow, so stand in for LittleCMS and check the call."""
    calls = []

    def convert(im, source, target, outputMode=None):
        calls.append((source, outputMode))
        return im.convert("RGB")

    monkeypatch.setattr(ImageCms, "ImageCmsProfile", lambda f: ("profile", f.read()))
    monkeypatch.setattr(ImageCms, "profileToProfile", convert)
    img = Image.fromarray(_rgb(rng)).convert("CMYK")
    img.info["icc_profile"] = b"a cmyk profile"
    pic = imaging.picture_from_pil(img)
    assert calls == [(("profile", b"a cmyk profile"), "RGB")]
    assert pic.icc_profile is None and pic.color.shape == (23, 31, 3)


def test_16bit_gray_png_and_tiff_keep_all_16_bits(rng):
    values = rng.integers(0, 65536, (19, 27)).astype(np.uint16)
    for fmt in ("PNG", "TIFF"):
        pic = imaging.decode(_bytes(Image.fromarray(values), fmt), f"g16.{fmt}")
        assert pic.depth == 16 and pic.gray and np.array_equal(pic.color, values)
        again = imaging.decode(imaging.encode(pic, fmt), "again")
        assert np.array_equal(again.color, values)


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_png_keeps_all_16_bits(channels, rng):
    values = rng.integers(0, 65536, (300, 21, channels)).astype(np.uint16)  # > one 256-row block
    data = png.encode_png(values, b"profile")
    info = imaging.probe(data, "c16.png")
    assert info.depth == 16 and info.has_alpha == (channels == 4)
    pic = imaging.decode(data, "c16.png")
    assert np.array_equal(pic.color, values[..., :3]) and pic.icc_profile == b"profile"
    if channels == 4:
        assert np.array_equal(pic.alpha, values[..., 3])
    # Pillow itself only sees the high bytes: proof that the low bytes come from us.
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)))[..., :3], (values[..., :3] >> 8).astype(np.uint8))
    lacks = "alpha and 16-bit samples" if channels == 4 else "16-bit samples"
    assert imaging.choose_format("jpg", info) == ("PNG", f"JPEG cannot store {lacks}, wrote PNG")
    assert np.array_equal(imaging.decode(imaging.encode(pic, "PNG"), "again").color, values[..., :3])


@pytest.mark.parametrize("interlace", [False, True])
def test_16bit_grey_alpha_png_keeps_all_16_bits(interlace, rng):
    values = rng.integers(0, 65536, (37, 23, 2)).astype(np.uint16)
    if interlace:  # Adam7, as other encoders write it (ours never interlaces)
        values = values[:9, :7]
        data = _png_adam7(values)
    else:
        data = png.encode_png(values, b"grey profile")
    info = imaging.probe(data, "la16.png")
    assert info.depth == 16 and info.gray and info.has_alpha
    pic = imaging.decode(data, "la16.png")
    assert np.array_equal(pic.color, values[..., 0]) and np.array_equal(pic.alpha, values[..., 1])
    assert imaging.choose_format("webp", info) == ("PNG", "WEBP cannot store 16-bit samples, wrote PNG")
    again = imaging.decode(imaging.encode(pic, "PNG"), "again")
    assert np.array_equal(again.color, values[..., 0]) and np.array_equal(again.alpha, values[..., 1])


@pytest.mark.parametrize("colour_type", [0, 2])  # 16-bit grey, 16-bit RGB
def test_16bit_png_colour_key_transparency_becomes_a_16bit_alpha(colour_type, rng):
    """A tRNS colour key is the transparency of 16-bit grey and RGB PNGs: the header says
    alpha, so the output keeps it (Pillow applies the key only at 8 bits)."""
    shape = (5, 7) if colour_type == 0 else (5, 7, 3)
    values = rng.integers(0, 65536, shape).astype(np.uint16)
    key = values[2, 3].copy()
    values[0, 0] = key  # two pixels carry the key
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)
    ihdr = struct.pack(">IIBBBBB", 7, 5, 16, colour_type, 0, 0, 0)
    trns = struct.pack(">H", int(key)) if colour_type == 0 else struct.pack(">HHH", *map(int, key))
    data = png.PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"tRNS", trns) + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b"")
    assert imaging.probe(data, "k16.png").has_alpha
    pic = imaging.decode(data, "k16.png")
    expected = np.full((5, 7), 65535, np.uint16)
    expected[0, 0] = expected[2, 3] = 0
    assert pic.depth == 16 and np.array_equal(pic.color, values) and np.array_equal(pic.alpha, expected)
    again = imaging.decode(imaging.encode(pic, "PNG"), "again")
    assert np.array_equal(again.color, values) and np.array_equal(again.alpha, expected)


def _png_adam7(samples: np.ndarray) -> bytes:
    """A 16-bit grey+alpha PNG, Adam7-interlaced, every row with filter 0 (None)."""
    height, width, _ = samples.shape
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = samples[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.astype(">u2").tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 4, 0, 0, 1)
    return png.PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b"")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("level", [0, 1, 3, 9])
def test_png_writer_keeps_every_sample_across_row_blocks(channels, dtype, level, rng, monkeypatch):
    """srdeploy.io.png on every colour type and depth, in blocks of a few rows so the Up
    filter's row above crosses block boundaries; Pillow (or read_png16, read_png16_grey_alpha) decodes it."""
    monkeypatch.setattr(png, "_BLOCK_BYTES", 100)
    shape = (37, 13) if channels == 1 else (37, 13, channels)
    values = rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    values[5:20] = values[4]  # flat rows: the Up filter's best case, still lossless
    data = png.encode_png(values, b"profile", level)
    pic = imaging.decode(data, "w.png")
    colour = values if channels in (1, 3) else values[..., :-1]
    if channels == 2:
        colour = colour[..., 0]
    assert pic.depth == 8 * values.dtype.itemsize and pic.icc_profile == b"profile"
    assert np.array_equal(pic.color, colour)
    assert (pic.alpha is None) == (channels in (1, 3)) and (pic.alpha is None or np.array_equal(pic.alpha, values[..., -1]))


def test_png_levels_pick_the_writer_and_zlib_gives_the_same_pixels_without_isal(rng, monkeypatch):
    """Levels 0-3 go through srdeploy.io.png (ISA-L when installed), 4-9 through Pillow's
    filter search; without ISA-L the fast levels deflate with zlib: other bytes, the same
    pixels."""
    face = np.asarray(Image.open(EXAMPLES / "astronaut_face.png").convert("RGB"))
    pic = Picture(face)
    assert imaging.encode(pic, "PNG", png_compression=6) == _bytes(Image.fromarray(face), "PNG", compress_level=6)
    fast = imaging.encode(pic, "PNG", png_compression=1)
    assert fast == png.encode_png(face, None, 1) and np.array_equal(imaging.decode(fast, "f.png").color, face)
    monkeypatch.setattr(png, "_isal", None)
    assert png.deflate_library(1) == "zlib"
    with_zlib = imaging.encode(pic, "PNG", png_compression=1)
    assert np.array_equal(imaging.decode(with_zlib, "z.png").color, face)
    with pytest.raises(ValueError, match="0 to 9"):
        png.encode_png(face, None, 10)
    with pytest.raises(TypeError, match="uint8 or uint16"):
        png.encode_png(face.astype(np.float32))


def test_16bit_png_from_another_encoder_with_sub_and_up_filters(rng):
    """Pillow's un-filtering is what read_png16 relies on: check it on filters we did not write."""
    values = rng.integers(0, 65536, (6, 5, 3)).astype(">u2")
    raw = values.reshape(6, -1).view(np.uint8)
    rows = []
    for y in range(6):
        if y % 2:  # Up
            rows.append(b"\x02" + (raw[y] - raw[y - 1]).tobytes())
        else:  # Sub, 6 bytes per pixel
            sub = raw[y].copy()
            sub[6:] -= raw[y, :-6]
            rows.append(b"\x01" + sub.tobytes())
    ihdr = struct.pack(">IIBBBBB", 5, 6, 16, 2, 0, 0, 0)
    data = png.PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"".join(rows))) + _png_chunk(b"IEND", b"")
    assert np.array_equal(imaging.decode(data, "f.png").color, values.astype(np.uint16))


# --- orientation and metadata --------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(orientation, fmt, rng):
    src = Image.fromarray(_rgb(rng, 10, 16))  # not square: rotations change the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _bytes(src, fmt, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    pic = imaging.decode(data, f"o{orientation}")
    assert pic.color.shape == expected.shape
    assert np.array_equal(pic.color, expected)
    assert (pic.color.shape[:2] == (16, 10)) == (orientation >= 5)


def test_exif_orientation_turns_alpha_with_colour(rng):
    src = Image.fromarray(rng.integers(0, 256, (6, 9, 4), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _bytes(src, "PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    pic = imaging.decode(data, "a.png")
    assert pic.alpha.shape == (9, 6)
    assert np.array_equal(pic.alpha, expected[..., 3]) and np.array_equal(pic.color, expected[..., :3])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_icc_profile_is_carried_to_the_output(fmt, rng):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    pic = imaging.decode(_bytes(Image.fromarray(_rgb(rng)), "PNG", icc_profile=icc), "icc.png")
    assert pic.icc_profile == icc
    assert Image.open(io.BytesIO(imaging.encode(pic, fmt))).info.get("icc_profile") == icc


# --- output formats ------------------------------------------------------------------


def test_a_grey_profile_is_not_put_on_webp_rgb(rng):
    """WebP has no grey: Pillow writes L as RGB, and a GRAY ICC profile on it is invalid."""
    grey_profile = bytes(16) + b"GRAY" + bytes(108)
    rgb_profile = bytes(16) + b"RGB " + bytes(108)
    grey = Picture(rng.integers(0, 256, (8, 8), dtype=np.uint8), None, grey_profile)
    assert Image.open(io.BytesIO(imaging.encode(grey, "WEBP"))).info.get("icc_profile") is None
    assert Image.open(io.BytesIO(imaging.encode(grey, "PNG"))).info.get("icc_profile") == grey_profile  # PNG keeps grey
    colour = Picture(_rgb(rng), None, rgb_profile)
    assert Image.open(io.BytesIO(imaging.encode(colour, "WEBP"))).info.get("icc_profile") == rgb_profile


def test_choose_format_rules():
    info = imaging.ImageInfo("x", "JPEG", 10, 10, has_alpha=False, depth=8, gray=False)
    assert imaging.choose_format("same", info) == ("JPEG", None)
    assert imaging.choose_format("webp", info) == ("WEBP", None)
    alpha = imaging.ImageInfo("x", "BMP", 10, 10, has_alpha=True, depth=8, gray=False)
    assert imaging.choose_format("same", alpha) == ("PNG", "BMP cannot store alpha, wrote PNG")
    assert imaging.choose_format("webp", alpha) == ("WEBP", None)
    mpo = imaging.ImageInfo("x", "MPO", 10, 10, has_alpha=False, depth=8, gray=False)
    assert imaging.choose_format("same", mpo)[0] == "JPEG"
    # Pillow writes 16-bit TIFF for grey only: 16-bit colour goes to PNG, with the reason.
    colour16 = imaging.ImageInfo("x", "PNG", 10, 10, has_alpha=False, depth=16, gray=False)
    assert imaging.choose_format("tiff", colour16) == ("PNG", "TIFF cannot store 16-bit colour or alpha (as Pillow writes it), wrote PNG")
    grey16 = imaging.ImageInfo("x", "PNG", 10, 10, has_alpha=False, depth=16, gray=True)
    assert imaging.choose_format("tiff", grey16) == ("TIFF", None)
    with pytest.raises(ValueError, match="unknown output format"):
        imaging.choose_format("gif", info)


def test_output_size_limits_per_format():
    wide = imaging.ImageInfo("wide.png", "PNG", 5000, 100, has_alpha=False, depth=8, gray=False)
    imaging.check_output_size(wide, 4, "PNG")
    with pytest.raises(ImageError, match=r"wide.png: the x4 output \(20000x400\) exceeds WEBP's limit of 16383"):
        imaging.check_output_size(wide, 4, "WEBP")
    # JPEG: libjpeg writes 65,500 a side at most (the format's field holds 65,535)
    Image.new("RGB", (imaging.MAX_SIDE["JPEG"], 1)).save(io.BytesIO(), "JPEG")
    with pytest.raises(OSError):
        Image.new("RGB", (imaging.MAX_SIDE["JPEG"] + 1, 1)).save(io.BytesIO(), "JPEG")
    edge = imaging.ImageInfo("edge.png", "PNG", 16376, 2, has_alpha=False, depth=8, gray=False)
    with pytest.raises(ImageError, match=r"edge.png: the x4 output \(65504x8\) exceeds JPEG's limit of 65500"):
        imaging.check_output_size(edge, 4, "JPEG")


def test_an_output_too_large_keeps_its_reason_apart_from_the_remedy():
    """The server and the page word the remedy for their own controls; Ray pickles it."""
    import pickle

    wide = imaging.ImageInfo("wide.png", "PNG", 5000, 100, has_alpha=False, depth=8, gray=False)
    with pytest.raises(imaging.OutputTooLarge) as caught:
        imaging.check_output_size(wide, 4, "WEBP")
    assert str(caught.value).endswith("16383 px a side; choose --format png") and not caught.value.reason.endswith("png")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (str(copy), copy.reason) == (str(caught.value), caught.value.reason)


def test_jpeg_quality_is_applied_and_suffix_spelling_is_kept(rng):
    pic = Picture(_rgb(rng, 64, 64))
    assert len(imaging.encode(pic, "JPEG", 30)) < len(imaging.encode(pic, "JPEG", 95))
    assert imaging.output_suffix("JPEG", ".JPEG") == ".JPEG"
    assert imaging.output_suffix("PNG", ".jpg") == ".png"
    assert imaging.output_suffix("TIFF", ".tiff") == ".tiff"


def test_encode_is_deterministic(rng):
    pic = Picture(_rgb(rng), rng.integers(0, 256, (23, 31), dtype=np.uint8))
    for fmt in ("PNG", "WEBP", "TIFF"):
        assert imaging.encode(pic, fmt) == imaging.encode(pic, fmt)


# --- the bad-input corpus ------------------------------------------------------------


def bad_inputs(rng) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, the reason its error must give). Shared with the CLI tests."""
    good_png = _bytes(Image.fromarray(_rgb(rng, 64, 64)), "PNG")
    jpeg = _bytes(Image.fromarray(_rgb(rng, 64, 64)), "JPEG")
    bomb = png.PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")
    frames = [Image.fromarray(_rgb(rng, 8, 8)).convert("P") for _ in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    lzw = bytearray(_bytes(Image.fromarray(_rgb(rng, 40, 40)), "TIFF", compression="tiff_lzw"))
    lzw[200:400] = bytes(b ^ 0x5A for b in lzw[200:400])  # LZW codes libtiff cannot follow (it would print so itself)
    return {
        "empty.png": (b"", "empty file (0 bytes)"),
        "truncated.png": (good_png[: len(good_png) // 2], "corrupt or truncated PNG data"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt or truncated JPEG data"),
        "notes.jpg": (b"shopping list: eggs, milk\n", "not an image (the file holds text)"),
        "bomb.png": (bomb, "its header declares 10,000,000,000 pixels, over the input cap of"),
        "big_icc.png": (_bytes(Image.fromarray(_rgb(rng, 8, 8)), "PNG", icc_profile=b"\0" * 3_000_000),  # valid, but Pillow inflates 1 MB a chunk at most
                        "its metadata (an ICC profile or text chunk) is larger than Pillow reads"),
        "animated.gif": (gif.getvalue(), "GIF with 3 frames; only still, single images are supported"),
        "corrupt_lzw.tif": (bytes(lzw), "corrupt or truncated TIFF data"),
        "icon.ico": (_bytes(Image.fromarray(_rgb(rng, 16, 16)), "ICO"), "ICO is not a supported input format"),
        "image.ppm": (_bytes(Image.fromarray(_rgb(rng, 16, 16)), "PPM"), "PNM is not a supported input format"),
    }


def test_a_progressive_jpeg_of_too_many_scans_is_refused_before_decoding(rng):
    """Each scan is a pass over the whole image: 200,000 scans in 2.4 MB took 7.5 s."""
    out = io.BytesIO()
    Image.fromarray(_rgb(rng, 64, 64)).save(out, "JPEG", progressive=True)
    jpeg = out.getvalue()
    assert imaging.decode(jpeg, "ok.jpg").color.shape == (64, 64, 3)  # an encoder's ~10 scans
    last_scan = jpeg[jpeg.rindex(b"\xff\xda"):-2]  # up to the end-of-image marker
    many = jpeg[:-2] + last_scan * 600 + jpeg[-2:]
    with pytest.raises(ImageError, match=r"many\.jpg: progressive JPEG of 6\d\d scans \(at most 500 are read"):
        imaging.decode(many, "many.jpg")


def test_a_many_page_tiff_is_refused_without_walking_its_pages(monkeypatch):
    """Counting a TIFF's pages checks each against every earlier one: a small file of
    60,000 one-pixel pages took 45 s to refuse, and held a server worker as long."""
    from PIL import TiffImagePlugin

    pages = [Image.new("L", (1, 1), v) for v in range(200)]
    out = io.BytesIO()
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:])

    def walked(self):
        raise AssertionError("n_frames walked every page")

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "n_frames", property(walked))
    with pytest.raises(ImageError, match="scan.tif: TIFF with several pages; only still, single images are supported"):
        imaging.decode(out.getvalue(), "scan.tif")


@pytest.mark.parametrize("name", list(bad_inputs(np.random.default_rng(0))))
def test_bad_input_gets_its_own_clear_error(name):
    data, reason = bad_inputs(np.random.default_rng(0))[name]
    with pytest.raises(ImageError) as caught:
        imaging.decode(data, f"folder/{name}")
    assert str(caught.value).startswith(f"folder/{name}: ")
    assert reason in str(caught.value)


def test_pixel_cap_is_checked_before_decoding(rng):
    """The IDAT here is garbage: reaching the decoder would report corruption instead."""
    head = png.PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 3000, 2000, 8, 2, 0, 0, 0))
    data = head + _png_chunk(b"IDAT", b"garbage") + _png_chunk(b"IEND", b"")
    with pytest.raises(ImageError, match=r"big.png: 3000x2000 \(6,000,000 pixels\) exceeds the input cap of 1,000,000 pixels"):
        imaging.decode(data, "big.png", max_pixels=1_000_000)
    with pytest.raises(ImageError, match="corrupt or truncated PNG"):
        imaging.decode(data, "big.png", max_pixels=10_000_000)


def test_a_pixel_cap_refusal_survives_pickling(rng):
    """Ray workers send their exceptions to the driver pickled: the refusal must arrive whole."""
    head = png.PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 3000, 2000, 8, 2, 0, 0, 0))
    with pytest.raises(imaging.TooManyPixels) as caught:
        imaging.probe(head + _png_chunk(b"IEND", b""), "big.png", max_pixels=1_000_000)
    back = pickle.loads(pickle.dumps(caught.value))
    assert type(back) is imaging.TooManyPixels and str(back) == str(caught.value)
    assert (back.pixels, back.width, back.height) == (caught.value.pixels, 3000, 2000)


def test_16bit_colour_tiff_is_refused_rather_than_read_at_8_bits(rng):
    tifffile = pytest.importorskip("tifffile")
    out = io.BytesIO()
    tifffile.imwrite(out, rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16))
    with pytest.raises(ImageError, match="colour.tif: 16-bit colour TIFF, which Pillow reads only at 8 bits; save it as a 16-bit PNG"):
        imaging.probe(out.getvalue(), "colour.tif")
    grey = io.BytesIO()
    tifffile.imwrite(grey, rng.integers(0, 65536, (6, 5), dtype=np.uint16))
    assert imaging.decode(grey.getvalue(), "grey.tif").color.dtype == np.uint16  # 16-bit grey still keeps its depth


def test_multipage_tiff_is_refused(rng):
    pages = [Image.fromarray(_rgb(rng, 8, 8)) for _ in range(2)]
    out = io.BytesIO()
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(ImageError, match="TIFF with several pages"):
        imaging.decode(out.getvalue(), "scan.tif")


def test_probe_reads_a_path_header_only(tmp_path, rng):
    path = tmp_path / "a.png"
    path.write_bytes(_bytes(Image.fromarray(_rgb(rng, 40, 60)), "PNG"))
    info = imaging.probe(path, "a.png")
    assert (info.format, info.width, info.height, info.has_alpha, info.depth, info.gray) == ("PNG", 60, 40, False, 8, False)
    with pytest.raises(ImageError, match="missing.png: cannot read"):
        imaging.probe(tmp_path / "missing.png", "missing.png")


def test_sniff_names_common_formats():
    assert imaging.sniff(b"\x00\x00\x00\x1cftypheic....") == "HEIC"
    assert imaging.sniff(b"\x00\x00\x00\x1cftypavif....") == "AVIF"
    assert imaging.sniff(b"%PDF-1.7") == "PDF"
    assert imaging.sniff("héllo wörld".encode()) == "text"
    assert imaging.sniff(bytes(range(200, 240))) is None


def test_decompression_bomb_warning_becomes_an_error():
    """100 Mpx is between Pillow's warning (89 Mpx) and its own error (179 Mpx)."""
    import warnings

    head = png.PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 10_000, 10_000, 8, 0, 0, 0, 0))
    data = head + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _png_chunk(b"IEND", b"")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="huge.png: its header declares 100,000,000 pixels, over the input cap of 89,478,485 pixels"):
            imaging.decode(data, "huge.png", max_pixels=10**9)  # Pillow's own guard, not raised by allow_pixels here: the cap in effect
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]


def test_header_checks_in_threads_leave_the_warning_filters_as_they_were(tmp_path):
    """catch_warnings swaps a process-wide list: unguarded, concurrent checks left the bomb
    filter on. In a fresh interpreter: pytest's own warning capture hides the race."""
    import subprocess
    import sys

    path = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)  # decoding lets threads interleave
    script = (
        "import warnings\nfrom concurrent.futures import ThreadPoolExecutor\nfrom srdeploy.io.imaging import read_rgb\n"
        "before = list(warnings.filters)\n"
        f"with ThreadPoolExecutor(8) as pool:\n    list(pool.map(lambda _: read_rgb({str(path)!r}), range(2000)))\n"
        "print(warnings.filters == before)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "True", run.stderr


def test_read_rgb_caps_pixels_without_naming_upscales_option(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    Image.new("RGB", (200, 100)).save(tmp_path / "b.png")
    with pytest.raises(ImageError) as refused:
        imaging.read_rgb(tmp_path / "b.png", max_pixels=1000)
    assert str(refused.value) == f"{tmp_path / 'b.png'}: 200x100 (20,000 pixels), over the cap of 1,000 pixels; not decoded"
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", None)  # a caller switched Pillow's guard off: no cap, not upscale's
    Image.new("RGB", (4200, 4100)).save(tmp_path / "big.png")
    assert imaging.read_rgb(tmp_path / "big.png").size == (4200, 4100)


def test_a_read_limit_allocates_for_the_file_not_for_the_limit(tmp_path):
    """read(n) allocates n bytes first: a 50 GiB limit on a small file was a MemoryError."""
    from srdeploy.io.files import FileTooLarge, read_regular

    path = tmp_path / "small.bin"
    path.write_bytes(b"x" * 100)
    assert read_regular(path, limit=50 * 2**30) == b"x" * 100
    assert read_regular(path, limit=100) == b"x" * 100
    with pytest.raises(FileTooLarge, match="more than 99 bytes"):
        read_regular(path, limit=99)


def test_an_atomic_write_never_replaces_a_device_or_a_pipe(tmp_path):
    """`bench --json /dev/null` as root would have replaced the system's /dev/null with a file."""
    import os

    from srdeploy.io.files import atomic_write_bytes

    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OSError, match="not a regular file: a named pipe; it is not replaced"):
        atomic_write_bytes(tmp_path / "pipe", b"{}")
    assert not (tmp_path / "pipe").is_file() and [p.name for p in tmp_path.iterdir()] == ["pipe"]
    atomic_write_bytes(tmp_path / "plain.json", b"{}")
    atomic_write_bytes(tmp_path / "plain.json", b"[]")  # a regular file is replaced, as ever
    assert (tmp_path / "plain.json").read_bytes() == b"[]"
