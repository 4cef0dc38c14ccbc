"""Image size limits checked before decoding, and bounded work for huge images."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from PIL import Image

from cxrseg.io import (
    DEFAULT_MAX_PIXELS,
    MIN_SIDE,
    CXRSegIOError,
    max_pixels,
    read_image,
    read_mask,
)


def _tiff_claiming(path, rows, cols):
    """A tiny zlib TIFF whose header claims ``rows`` x ``cols`` pixels (a decompression bomb:
    the real file is a few hundred bytes)."""
    import tifffile

    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), compression="zlib")
    raw = bytearray(path.read_bytes())
    order = "<" if raw[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", raw[4:8])[0]
    n = struct.unpack(order + "H", raw[ifd : ifd + 2])[0]
    for k in range(n):
        e = ifd + 2 + 12 * k
        tag, typ, _count = struct.unpack(order + "HHI", raw[e : e + 8])
        value = {256: cols, 257: rows, 278: rows}.get(tag)
        if value is None:
            continue
        if typ == 3:  # SHORT
            raw[e + 8 : e + 12] = struct.pack(order + "HH", min(value, 65535), 0)
        else:
            raw[e + 8 : e + 12] = struct.pack(order + "I", value)
    path.write_bytes(bytes(raw))
    return path


def _no_decoding(monkeypatch):
    """Fail the test if any pixel of a TIFF is decoded."""
    import tifffile

    def boom(*_a, **_k):
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", boom)
    monkeypatch.setattr(tifffile, "imread", boom)


def test_decompression_bomb_tiff_is_refused_before_decoding(tmp_path, monkeypatch):
    p = _tiff_claiming(tmp_path / "bomb.tif", 20000, 20000)
    assert p.stat().st_size < 10_000
    _no_decoding(monkeypatch)
    with pytest.raises(CXRSegIOError, match=r"20000x20000 pixels .*above the limit") as e:
        read_image(p)
    assert str(p) in str(e.value)
    with pytest.raises(CXRSegIOError, match="above the limit"):
        read_mask(p)
    wide = _tiff_claiming(tmp_path / "wide.tif", 15000, 30000)
    with pytest.raises(CXRSegIOError, match=r"15000x30000 pixels \(450,000,000 pixels\)"):
        read_image(wide)


def test_tifffile_fallback_checks_the_size_first(tmp_path, monkeypatch):
    import cxrseg.io as cio

    p = tmp_path / "big.tif"
    import tifffile

    tifffile.imwrite(p, np.zeros((300, 200), np.uint16))

    def pillow_cannot(*_a, **_k):
        raise CXRSegIOError("Pillow cannot read it")

    monkeypatch.setattr(cio, "_open_pil", pillow_cannot)
    assert read_image(p).shape == (300, 200)  # the fallback itself works
    monkeypatch.setenv("CXRSEG_MAX_PIXELS", "50000")
    _no_decoding(monkeypatch)
    with pytest.raises(CXRSegIOError, match=r"300x200 pixels .*above the limit of 50,000 pixels"):
        read_image(p)


def test_limit_is_configurable_for_every_decoder(tmp_path, monkeypatch):
    from cxrseg.phantom import write_phantom_case

    write_phantom_case(tmp_path, "PH_DCM", 1, image_format="dcm", size=96)
    write_phantom_case(tmp_path, "PH_IMG", 2, image_format="img", size=64)
    png = tmp_path / "p.png"
    Image.fromarray(np.zeros((100, 80), np.uint8)).save(png)
    files = [tmp_path / "images" / "PH_DCM.dcm", tmp_path / "images" / "PH_IMG.IMG", png]
    for f in files:
        read_image(f)  # within the default limit
    assert max_pixels() == DEFAULT_MAX_PIXELS
    monkeypatch.setenv("CXRSEG_MAX_PIXELS", "1000")
    assert max_pixels() == 1000
    for f in files:
        with pytest.raises(CXRSegIOError, match="above the limit") as e:
            read_image(f)
        assert str(f) in str(e.value)
    monkeypatch.delenv("CXRSEG_MAX_PIXELS")
    with pytest.raises(CXRSegIOError, match="above the limit"):
        read_image(png, max_pixels=1000)
    monkeypatch.setenv("CXRSEG_MAX_PIXELS", "lots")
    with pytest.raises(CXRSegIOError, match="CXRSEG_MAX_PIXELS"):
        max_pixels()


def test_tiny_images_are_not_segmented(tmp_path, capsys):
    from _tiny_model import make_tiny_checkpoint

    from cxrseg.cli import main

    ck = make_tiny_checkpoint(tmp_path / "tiny.safetensors")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(tmp_path / "in" / "dot.png")
    Image.fromarray(np.zeros((MIN_SIDE, MIN_SIDE + 5), np.uint8)).save(tmp_path / "in" / "ok.png")
    with pytest.raises(CXRSegIOError, match="at least 32x32"):
        read_image(tmp_path / "in" / "dot.png", min_side=MIN_SIDE)
    rc = main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--model", str(ck),
               "--workers", "0", "--quiet"])
    assert rc == 1
    err = (tmp_path / "out" / "errors.csv").read_text()
    assert "dot.png" in err and "at least 32x32" in err and "ok.png" not in err
    assert not (tmp_path / "out" / "masks" / "heart" / "dot.png").exists()
    assert (tmp_path / "out" / "masks" / "heart" / "ok.png").is_file()


def test_huge_images_are_decoded_reduced_and_written_at_the_documented_size(tmp_path):
    from _tiny_model import make_tiny_checkpoint

    from cxrseg.batch import output_shape
    from cxrseg.cli import main

    a = (np.arange(600 * 300) % 251).astype(np.uint8).reshape(600, 300)
    p = tmp_path / "in" / "wide.png"
    p.parent.mkdir()
    Image.fromarray(a).save(p)
    img = read_image(p, max_side=256)
    assert img.shape == (200, 100)  # reduced by 3 right after decoding
    assert img.meta["original_shape"] == (600, 300) and img.meta["reduced_by"] == 3
    np.testing.assert_allclose(img.data[0, 0], a[:3, :3].mean() / 255, atol=1 / 255)
    assert output_shape((600, 300), 256) == (256, 128)
    assert output_shape((600, 300), None) == (600, 300)
    ck = make_tiny_checkpoint(tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    assert main(["predict", str(p.parent), "--out", str(out), "--model", str(ck), "--workers", "0",
                 "--quiet", "--max-output-side", "256"]) == 0
    m = np.asarray(Image.open(out / "masks" / "heart" / "wide.png"))
    assert m.shape == (256, 128)
    rows = (out / "predictions.csv").read_text().splitlines()
    assert ",256,128," in rows[1]
    # the native size when it fits
    assert main(["predict", str(p.parent), "--out", str(tmp_path / "out2"), "--model", str(ck),
                 "--workers", "0", "--quiet"]) == 0
    assert np.asarray(Image.open(tmp_path / "out2" / "masks" / "heart" / "wide.png")).shape == (
        600,
        300,
    )
