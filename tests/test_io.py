"""cxrseg.io: every reader on files generated in tmp_path, malformed ones included."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image

from cxrseg import io as cio
from cxrseg.io import (
    IMAGE_SUFFIXES,
    JSRT_NBYTES,
    CXRImage,
    CXRSegFileNotFoundError,
    CXRSegIOError,
    is_dicom,
    is_hidden,
    read_dicom,
    read_image,
    read_jsrt_img,
    read_mask,
    read_raster,
    resize_mask_nearest,
    same_aspect,
    write_jsrt_img,
    write_mask,
)

# ------------------------------------------------------------------------------ helpers


def _gradient(rows=32, cols=48):
    r = np.linspace(0.0, 1.0, rows)[:, None]
    c = np.linspace(0.0, 1.0, cols)[None, :]
    return (0.5 * r + 0.5 * c).astype(np.float64)


def _check_image(im, shape=None):
    assert isinstance(im, CXRImage)
    assert im.data.dtype == np.float32
    assert im.data.ndim == 2
    assert 0.0 <= float(im.data.min()) and float(im.data.max()) <= 1.0
    if shape is not None:
        assert im.data.shape == shape


def _raw_jsrt(tmp_path, name="case.IMG", values=None):
    if values is None:
        values = np.zeros((2048, 2048), np.uint16)
        values[:, 1024:] = 4095
        values[0, 0] = 1000
    p = tmp_path / name
    values.astype(">u2").tofile(p)
    return p


# --------------------------------------------------------------------------------- JSRT


def test_jsrt_polarity_byte_order_and_spacing(tmp_path):
    p = _raw_jsrt(tmp_path)
    im = read_jsrt_img(p)
    _check_image(im, (2048, 2048))
    assert im.spacing == (0.175, 0.175)
    assert im.meta["format"] == "jsrt-img"
    assert im.path == p
    # raw 0 (no density) -> bright 1.0; 4095 -> 0.0; big-endian 1000 -> 1 - 1000/4095
    assert im.data[5, 5] == pytest.approx(1.0)
    assert im.data[5, 2000] == pytest.approx(0.0)
    assert im.data[0, 0] == pytest.approx(1.0 - 1000 / 4095, abs=1e-6)
    # read_image dispatches .IMG (upper-case suffix) to the JSRT reader
    assert read_image(p).meta["format"] == "jsrt-img"


def test_jsrt_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((2048, 2048))
    p = write_jsrt_img(img, tmp_path / "sub" / "JPCLN999.IMG")
    assert p.stat().st_size == JSRT_NBYTES
    back = read_jsrt_img(p).data
    assert np.abs(back - img).max() <= 0.5 / 4095 + 1e-6
    # the file holds film density: bright pixel -> small raw value
    raw = np.fromfile(p, ">u2").reshape(2048, 2048)
    assert raw[0, 0] == round((1 - img[0, 0]) * 4095)


def test_jsrt_write_refuses_other_size(tmp_path):
    with pytest.raises(CXRSegIOError, match="2048x2048") as e:
        write_jsrt_img(np.zeros((64, 64)), tmp_path / "small.IMG")
    assert "small.IMG" in str(e.value)
    assert not (tmp_path / "small.IMG").exists()


@pytest.mark.parametrize("nbytes", [0, JSRT_NBYTES - 1, 1024 * 1024 * 2, JSRT_NBYTES + 2])
def test_jsrt_wrong_size_refused(tmp_path, nbytes):
    p = tmp_path / "bad.IMG"
    p.write_bytes(b"\x00" * nbytes)
    with pytest.raises(CXRSegIOError) as e:
        read_image(p)
    msg = str(e.value)
    assert "bad.IMG" in msg and "8388608" in msg and str(nbytes) in msg


def test_jsrt_values_above_12_bit_refused(tmp_path):
    v = np.zeros((2048, 2048), np.uint16)
    v[10, 10] = 4096
    p = _raw_jsrt(tmp_path, "over.IMG", v)
    with pytest.raises(CXRSegIOError, match="4096") as e:
        read_jsrt_img(p)
    assert "over.IMG" in str(e.value)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.png"
    with pytest.raises(CXRSegIOError) as e:
        read_image(p)
    assert isinstance(e.value, FileNotFoundError)
    assert isinstance(e.value, CXRSegFileNotFoundError)
    assert "nope.png" in str(e.value)
    with pytest.raises(CXRSegIOError, match="nope.gif"):
        read_mask(tmp_path / "nope.gif")


def test_folder_refused(tmp_path):
    d = tmp_path / "dir.png"
    d.mkdir()
    with pytest.raises(CXRSegIOError, match="dir.png"):
        read_image(d)


def test_image_suffixes():
    for s in (".img", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        assert s in IMAGE_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)


# ------------------------------------------------------------------------------- raster


def test_png_8bit(tmp_path):
    a = np.arange(256, dtype=np.uint8).reshape(16, 16)
    p = tmp_path / "g.png"
    Image.fromarray(a).save(p)
    im = read_image(p)
    _check_image(im, (16, 16))
    np.testing.assert_allclose(im.data, a / 255.0, atol=1e-6)
    assert im.meta["format"] == "png"


def test_png_16bit(tmp_path):
    a = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    a[0, 0] = 65535
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    im = read_raster(p)
    _check_image(im, (16, 16))
    np.testing.assert_allclose(im.data, a / 65535.0, atol=1e-6)
    # 12-bit content in a 16-bit PNG (max < 4096) is divided by 4095, with a warning
    b = np.full((8, 8), 4095, np.uint16)
    b[0, 0] = 300  # keep it out of the 8-bit range
    Image.fromarray(b).save(tmp_path / "g12.png")
    im12 = read_raster(tmp_path / "g12.png")
    assert im12.data[1, 1] == pytest.approx(1.0, abs=1e-6)
    assert "12-bit" in im12.meta["warning"]


def test_png_1bit(tmp_path):
    a = np.zeros((10, 12), bool)
    a[2:5, 3:7] = True
    p = tmp_path / "b.png"
    Image.fromarray(a).save(p)
    im = read_raster(p)
    np.testing.assert_array_equal(im.data, a.astype(np.float32))


def test_palette_png_read_through_palette(tmp_path):
    idx = np.zeros((8, 8), np.uint8)
    idx[:, 4:] = 1
    pal = Image.new("P", (8, 8))
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * (256 * 3 - 6))
    pal.putdata(idx.ravel().tolist())
    p = tmp_path / "pal.png"
    pal.save(p)
    with Image.open(p) as written:
        assert written.mode == "P"
    im = read_raster(p)
    # index 1 -> white through the palette (not 1/255)
    assert im.data[0, 7] == pytest.approx(1.0)
    assert im.data[0, 0] == pytest.approx(0.0)
    # coloured palette -> luma
    pal2 = Image.new("P", (4, 4))
    pal2.putpalette([255, 0, 0] + [0] * 765)
    pal2.putdata([0] * 16)
    pal2.save(tmp_path / "red.png")
    assert read_raster(tmp_path / "red.png").data[0, 0] == pytest.approx(0.299, abs=1e-3)


def test_rgb_jpeg_and_rgba_png(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 1] = 200  # green
    p = tmp_path / "c.jpg"
    Image.fromarray(rgb).save(p, quality=95)
    im = read_image(p)
    _check_image(im, (16, 16))
    assert im.meta["format"] == "jpeg"
    assert im.data.mean() == pytest.approx(0.587 * 200 / 255, abs=0.03)
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., :3] = 128
    rgba[..., 3] = 10  # alpha ignored
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert read_raster(tmp_path / "a.png").data[0, 0] == pytest.approx(128 / 255, abs=1e-3)


def test_tiff_8bit_16bit_float(tmp_path):
    import tifffile

    a8 = (_gradient() * 255).astype(np.uint8)
    Image.fromarray(a8).save(tmp_path / "a8.tif")
    np.testing.assert_allclose(read_image(tmp_path / "a8.tif").data, a8 / 255, atol=1e-6)
    a16 = (_gradient() * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a16.tiff", a16)
    np.testing.assert_allclose(read_image(tmp_path / "a16.tiff").data, a16 / 65535, atol=1e-6)
    f = _gradient().astype(np.float32) * 0.5 + 0.25  # in [0,1] -> kept
    tifffile.imwrite(tmp_path / "f.tif", f)
    im = read_image(tmp_path / "f.tif")
    _check_image(im, f.shape)
    np.testing.assert_allclose(im.data, f, atol=1e-6)
    g = _gradient().astype(np.float32) * 3000 - 1000  # out of range -> min-max
    tifffile.imwrite(tmp_path / "g.tif", g)
    im = read_image(tmp_path / "g.tif")
    assert im.data.min() == pytest.approx(0.0) and im.data.max() == pytest.approx(1.0)
    np.testing.assert_allclose(im.data, _gradient(), atol=1e-5)
    # float64 RGB TIFF: Pillow cannot read it; tifffile fallback
    rgb = np.stack([_gradient()] * 3, axis=-1).astype(np.float64)
    tifffile.imwrite(tmp_path / "rgb64.tif", rgb, photometric="rgb")
    im = read_image(tmp_path / "rgb64.tif")
    np.testing.assert_allclose(im.data, _gradient(), atol=1e-5)


def test_bmp(tmp_path):
    a = (_gradient() * 255).astype(np.uint8)
    Image.fromarray(a).convert("RGB").save(tmp_path / "x.bmp")
    im = read_image(tmp_path / "x.bmp")
    np.testing.assert_allclose(im.data, a / 255, atol=2e-3)


@pytest.mark.parametrize(
    "name,content",
    [
        ("empty.png", b""),
        ("text.png", b"this is not an image\n" * 10),
        ("text.jpg", b"hello"),
        pytest.param(
            "text.tif",
            b"II*\x00garbage",
            marks=pytest.mark.filterwarnings("ignore:Corrupt EXIF"),
        ),
    ],
)
def test_bad_raster_refused(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(CXRSegIOError) as e:
        read_image(p)
    msg = str(e.value)
    assert name in msg
    assert "expected a PNG/JPEG/TIFF/BMP image" in msg


def test_truncated_png_refused(tmp_path):
    a = np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)
    good = tmp_path / "good.png"
    Image.fromarray(a).save(good)
    data = good.read_bytes()
    bad = tmp_path / "trunc.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CXRSegIOError) as e:
        read_image(bad)
    assert "trunc.png" in str(e.value) and "expected a PNG/JPEG/TIFF/BMP image" in str(e.value)


def test_format_override_and_unknown(tmp_path):
    a = (_gradient() * 255).astype(np.uint8)
    p = tmp_path / "noext"
    Image.fromarray(a).save(p, format="PNG")
    assert read_image(p).data.shape == a.shape  # content sniffed
    assert read_image(p, format="png").data.shape == a.shape
    with pytest.raises(CXRSegIOError, match="noext"):
        read_image(p, format="nifti")


# -------------------------------------------------------------------------------- DICOM


def _dicom(
    path,
    pixels=None,
    *,
    photometric="MONOCHROME2",
    ts=None,
    bits=12,
    rows=None,
    cols=None,
    frames=1,
    spp=1,
    **extra,
):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    fm = FileMetaDataset()
    fm.TransferSyntaxUID = ts or ExplicitVRLittleEndian
    fm.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    fm.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = fm.MediaStorageSOPClassUID
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if pixels is not None or rows is not None:
        ds.Rows = rows if rows is not None else pixels.shape[-2 if spp == 1 else -3]
        ds.Columns = cols if cols is not None else pixels.shape[-1 if spp == 1 else -2]
        ds.SamplesPerPixel = spp
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16 if bits > 8 else 8
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 0
        if spp > 1:
            ds.PlanarConfiguration = 0
        if frames > 1:
            ds.NumberOfFrames = frames
    if isinstance(pixels, np.ndarray):
        ds.PixelData = pixels.tobytes()
    elif pixels is not None:
        ds.PixelData = pixels
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_monochrome1_inverted_rescaled_spacing(tmp_path):
    raw = np.array([[0, 1000, 2000], [3000, 4000, 4095]], np.uint16)
    # modality values = 2 * raw - 1000 in [-1000, 7190]; window on modality values
    p = _dicom(
        tmp_path / "m1.dcm",
        raw,
        photometric="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=3000,
        WindowWidth=4001,
        PixelSpacing=[0.2, 0.3],
    )
    im = read_dicom(p)
    _check_image(im, (2, 3))
    assert im.spacing == (0.2, 0.3)
    assert im.meta["format"] == "dicom" and im.meta["photometric"] == "MONOCHROME1"
    modality = 2.0 * raw - 1000
    # linear window (DICOM C.11.2.1.2.1), normalised to [0,1], then inverted
    c, w = 3000.0, 4001.0
    y = np.clip((modality - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(im.data, 1.0 - y, atol=1e-4)
    # inversion: the brightest raw value becomes the darkest pixel
    assert im.data[0, 0] > im.data[1, 2]
    # had the rescale been ignored, raw 2000 would sit at the window centre's far side
    assert im.data[0, 2] == pytest.approx(1.0 - y[0, 2], abs=1e-4)
    assert abs((1.0 - im.data[0, 2]) - np.clip((2000 - 2999.5) / 4000 + 0.5, 0, 1)) > 0.2


def test_dicom_monochrome1_without_window_min_max(tmp_path):
    raw = np.array([[0, 100], [200, 400]], np.uint16)
    p = _dicom(
        tmp_path / "m1b.dcm", raw, photometric="MONOCHROME1", ImagerPixelSpacing=[0.15, 0.15]
    )
    im = read_image(p)
    np.testing.assert_allclose(im.data, 1 - raw / 400.0, atol=1e-6)
    assert im.spacing == (0.15, 0.15)


def test_dicom_monochrome2_window(tmp_path):
    raw = (np.arange(20).reshape(4, 5) * 200).astype(np.uint16)
    p = _dicom(tmp_path / "m2.dcm", raw, WindowCenter=2000, WindowWidth=1000)
    im = read_image(p)
    _check_image(im, (4, 5))
    assert im.spacing is None
    c, w = 2000.0, 1000.0
    y = np.clip((raw - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(im.data, y, atol=1e-4)
    assert im.meta["window"] == (2000.0, 1000.0)


def test_dicom_without_suffix_sniffed(tmp_path):
    raw = np.array([[0, 10], [20, 30]], np.uint16)
    p = _dicom(tmp_path / "IM0001", raw)
    assert is_dicom(p)
    assert read_image(p).meta["format"] == "dicom"
    assert not is_dicom(tmp_path / "missing.png")
    assert is_dicom(str(p))  # str or path-like
    assert is_dicom(tmp_path / "missing.dcm")  # by its suffix alone


def test_dicom_with_img_suffix_is_not_taken_for_jsrt(tmp_path):
    p = _dicom(tmp_path / "scan.IMG", np.array([[0, 10], [20, 30]], np.uint16))
    assert is_dicom(p) and read_image(p).meta["format"] == "dicom"


def test_dicom_multiframe_first_frame(tmp_path):
    frames = np.stack([np.full((3, 4), 100, np.uint16), np.full((3, 4), 200, np.uint16)])
    frames[0, 0, 0] = 0
    p = _dicom(tmp_path / "mf.dcm", frames, frames=2, rows=3, cols=4)
    im = read_dicom(p)
    assert im.data.shape == (3, 4)
    assert im.meta["n_frames"] == 2 and "first frame" in im.meta["note"]
    assert im.data[0, 0] == 0.0 and im.data[1, 1] == 1.0


def test_dicom_rgb_to_gray(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 255, 255)
    rgb[1, 1] = (0, 255, 0)
    p = _dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", bits=8, spp=3)
    im = read_dicom(p)
    assert im.data.shape == (2, 2)
    assert im.data[0, 0] == pytest.approx(1.0, abs=1e-3)
    assert im.data[1, 1] == pytest.approx(0.587, abs=1e-3)


def test_dicom_without_pixel_data_refused(tmp_path):
    p = _dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(CXRSegIOError) as e:
        read_image(p)
    assert "nopix.dcm" in str(e.value) and "no pixel data" in str(e.value)


def test_not_a_dicom_refused(tmp_path):
    p = tmp_path / "fake.dcm"
    p.write_bytes(b"")
    with pytest.raises(CXRSegIOError, match="fake.dcm"):
        read_image(p)
    p2 = tmp_path / "fake2.dcm"
    p2.write_text("just text, no DICOM here\n" * 5)
    with pytest.raises(CXRSegIOError, match="fake2.dcm"):
        read_image(p2)


def _have_jpegls_decoder() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("libjpeg", "jpeg_ls", "gdcm"))


def test_dicom_compressed_without_decoder(tmp_path):
    if _have_jpegls_decoder():
        pytest.skip("a JPEG-LS decoder is installed")
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    fragment = b"\xff\xd8\xff\xf7" + b"\x00" * 60
    p = _dicom(tmp_path / "jls.dcm", encapsulate([fragment]), ts=JPEGLSLossless, rows=8, cols=8)
    with pytest.raises(CXRSegIOError) as e:
        read_image(p)
    msg = str(e.value)
    assert "jls.dcm" in msg
    assert "1.2.840.10008.1.2.4.80" in msg and "JPEG-LS" in msg
    assert "pip install" in msg and "pylibjpeg" in msg


# -------------------------------------------------------------------------------- masks


def _mask(rows=20, cols=30):
    m = np.zeros((rows, cols), bool)
    m[3:12, 5:20] = True
    return m


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_write_mask_round_trip(tmp_path, suffix):
    m = _mask()
    p = write_mask(m, tmp_path / "new" / "dir" / f"heart{suffix}")
    assert p.exists()
    with Image.open(p) as written:
        assert written.mode in ("L", "P")
        vals = np.unique(np.asarray(written.convert("L")))
    assert set(vals.tolist()) == {0, 255}
    back = read_mask(p, shape=m.shape)
    assert back.dtype == bool
    np.testing.assert_array_equal(back, m)
    assert [q.name for q in p.parent.iterdir()] == [p.name]  # no temp file left


def test_write_mask_accepts_float_and_uint(tmp_path):
    m = _mask()
    np.testing.assert_array_equal(read_mask(write_mask(m * 0.9, tmp_path / "f.png")), m)
    np.testing.assert_array_equal(read_mask(write_mask(m.astype(np.uint8), tmp_path / "u.png")), m)


def test_write_mask_bad_args(tmp_path):
    with pytest.raises(CXRSegIOError, match="m.jpg"):
        write_mask(_mask(), tmp_path / "m.jpg")
    with pytest.raises(CXRSegIOError, match="m3.png"):
        write_mask(np.zeros((2, 3, 4), bool), tmp_path / "m3.png")
    assert list(tmp_path.iterdir()) == []


def test_read_mask_values_01_and_255(tmp_path):
    m = _mask()
    Image.fromarray(m.astype(np.uint8)).save(tmp_path / "m01.png")
    Image.fromarray(m.astype(np.uint8) * 255).save(tmp_path / "m255.gif")
    np.testing.assert_array_equal(read_mask(tmp_path / "m01.png"), m)
    np.testing.assert_array_equal(read_mask(tmp_path / "m255.gif"), m)
    Image.fromarray(m).save(tmp_path / "m1bit.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m1bit.png"), m)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "empty_mask.png")
    assert not read_mask(tmp_path / "empty_mask.png").any()


def test_read_mask_rgb(tmp_path):
    m = _mask()
    gray_rgb = np.stack([m.astype(np.uint8) * 255] * 3, axis=-1)
    Image.fromarray(gray_rgb).save(tmp_path / "grayrgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grayrgb.png"), m)
    rgb = np.zeros((*m.shape, 3), np.uint8)
    rgb[m] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "red.png")
    with pytest.raises(CXRSegIOError) as e:
        read_mask(tmp_path / "red.png")
    assert "red.png" in str(e.value) and "single-channel" in str(e.value)
    rgba = np.zeros((*m.shape, 4), np.uint8)
    rgba[m] = (255, 255, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    with pytest.raises(CXRSegIOError, match="rgba.png"):
        read_mask(tmp_path / "rgba.png")


def test_read_mask_wrong_shape(tmp_path):
    write_mask(_mask(20, 30), tmp_path / "s.png")
    with pytest.raises(CXRSegIOError) as e:
        read_mask(tmp_path / "s.png", shape=(1024, 1024))
    assert "s.png" in str(e.value) and "expected 1024x1024" in str(e.value)
    assert read_mask(tmp_path / "s.png", shape=(20, 30)).shape == (20, 30)


def test_read_mask_non_binary_and_garbage(tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "gray.png")
    with pytest.raises(CXRSegIOError, match="gray.png.*binary"):
        read_mask(tmp_path / "gray.png")
    (tmp_path / "t.gif").write_text("GIF? no")
    with pytest.raises(CXRSegIOError, match="t.gif"):
        read_mask(tmp_path / "t.gif")
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(CXRSegIOError, match="e.png"):
        read_mask(tmp_path / "e.png")


def test_resize_mask_nearest():
    m = np.array([[1, 0], [0, 1]], bool)
    up = resize_mask_nearest(m, (4, 4))
    assert up.dtype == bool
    np.testing.assert_array_equal(up, np.kron(m, np.ones((2, 2), bool)))  # exact replication
    np.testing.assert_array_equal(resize_mask_nearest(up, (2, 2)), m)  # back, by pixel centres
    assert resize_mask_nearest(m, (2, 2)) is m  # already on the grid: the same array
    lab = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = resize_mask_nearest(lab, (6, 8))
    assert out.dtype == np.uint8 and set(np.unique(out)) == set(range(12))  # values kept
    assert resize_mask_nearest([[True, False]], (1, 4)).tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError, match="2-D"):
        resize_mask_nearest(np.zeros((2, 3, 3)), (4, 4))


def test_same_aspect():
    assert same_aspect((1024, 1024), (2048, 2048))
    assert same_aspect((100, 200), (50, 100)) and same_aspect((1000, 1000), (1000, 1005))
    assert not same_aspect((100, 200), (200, 200)) and not same_aspect((1000, 1000), (1000, 1020))
    assert same_aspect((1000, 1000), (1000, 1020), tolerance=0.05)


def test_is_hidden():
    assert is_hidden(".DS_Store") and is_hidden(".git") and is_hidden("__pycache__")
    assert not is_hidden("JPCLN001.IMG") and not is_hidden("masks") and not is_hidden("a.b")


# --------------------------------------------------------------------------- atomicity


def test_write_mask_atomic_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "left_lung.png"
    write_mask(_mask(), target)
    before = target.read_bytes()

    def broken_fsync(fd):  # the content is in the temporary file when the disk fills
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(cio.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_mask(~_mask(), target)
    assert target.read_bytes() == before
    assert sorted(q.name for q in tmp_path.iterdir()) == ["left_lung.png"]
    # same for a new file: nothing created
    with pytest.raises(OSError):
        write_mask(_mask(), tmp_path / "heart.gif")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["left_lung.png"]


def test_write_jsrt_img_atomic_on_failure(tmp_path, monkeypatch):
    target = _raw_jsrt(tmp_path, "keep.IMG")
    before = target.read_bytes()
    real_replace = cio.os.replace

    def boom(src, dst):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(cio.os, "replace", boom)
    with pytest.raises(OSError, match="rename failed"):
        write_jsrt_img(np.zeros((2048, 2048)), target)
    monkeypatch.setattr(cio.os, "replace", real_replace)
    assert target.read_bytes() == before
    assert sorted(q.name for q in tmp_path.iterdir()) == ["keep.IMG"]


@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (7, 300), (333, 17), (1024, 1024)])
def test_png_masks_decode_to_the_same_pixels(tmp_path, shape):
    import io as _io

    from cxrseg.io import png_gray8

    rng = np.random.default_rng(sum(shape))
    m = rng.random(shape) > 0.6
    m[: shape[0] // 2] = False  # runs, as in real masks
    a = np.where(m, 255, 0).astype(np.uint8)
    im = Image.open(_io.BytesIO(png_gray8(a)))
    assert im.mode == "L" and im.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(im), a)
    p = write_mask(m, tmp_path / "m.png")
    assert np.array_equal(np.asarray(Image.open(p)), a)
    assert np.array_equal(read_mask(p), m)
    with pytest.raises(ValueError, match="uint8"):
        png_gray8(a.astype(np.uint16))
