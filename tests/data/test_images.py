"""Tests for tmrjax/data/images.py. Every input is generated here with PIL/numpy."""

import errno
import io
import json
import os
import pathlib
import pickle
import shutil
import struct
import tempfile
import traceback
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from tmrjax.data import images, sources
from tmrjax.data.images import (
    IMAGE_EXTENSIONS,
    Batch,
    FailureLog,
    ImageError,
    list_images,
    load_image,
    pad_to_square,
    prepare,
    prepare_multi,
)
from tmrjax.data.sources import ArraySource, PathSource, iter_batches

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _save(pil, path, **kw):
    pil.save(path, **kw)
    return str(path)


def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mode(path):
    with Image.open(path) as img:
        return img.mode


def _info(path):
    with Image.open(path) as img:
        return img.info


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(path, w, h):
    """A tiny PNG whose header claims w x h pixels but holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b""))
    path.write_bytes(data + _png_chunk(b"IEND", b""))
    return str(path)


def _reason(path, **kw):
    with pytest.raises(ImageError) as info:
        load_image(path, **kw)
    assert info.value.path == os.fspath(path)
    assert str(info.value) == f"{os.fspath(path)}: {info.value.reason}"
    return info.value.reason


# ---------------------------------------------------------------------------------------------------------------
# ImageError


def test_image_error_carries_path_and_reason():
    e = ImageError("a/b.png", "empty file (0 bytes)")
    assert isinstance(e, ValueError)
    assert (e.path, e.reason, str(e)) == ("a/b.png", "empty file (0 bytes)", "a/b.png: empty file (0 bytes)")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.reason, str(e2)) == (e.path, e.reason, str(e))


# ---------------------------------------------------------------------------------------------------------------
# load_image: good inputs


def test_rgb_png_exact(tmp_path):
    a = _noise(5, 7)
    out = load_image(_save(Image.fromarray(a), tmp_path / "x.png"))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and out.flags.writeable
    np.testing.assert_array_equal(out, a)


def test_one_pixel(tmp_path):
    out = load_image(_save(Image.new("RGB", (1, 1), (10, 20, 30)), tmp_path / "p.png"))
    np.testing.assert_array_equal(out, [[[10, 20, 30]]])


def test_grayscale_and_one_bit(tmp_path):
    g = np.array([[0, 100], [200, 255]], np.uint8)
    out = load_image(_save(Image.fromarray(g), tmp_path / "g.png"))
    np.testing.assert_array_equal(out, np.repeat(g[:, :, None], 3, axis=2))
    b = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    path = _save(b, tmp_path / "b.png")
    assert _mode(path) == "1"
    np.testing.assert_array_equal(load_image(path)[:, :, 0], [[0, 255], [255, 0]])


def test_palette_without_and_with_transparency(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette(list(RED) + list(BLUE) + [0] * 762)
    p.putdata([0, 1])
    opaque = _save(p, tmp_path / "p.png")
    assert _mode(opaque) == "P"
    np.testing.assert_array_equal(load_image(opaque), [[RED, BLUE]])
    clear = _save(p, tmp_path / "pt.png", transparency=1)  # palette entry 1 (blue) is transparent
    assert "transparency" in _info(clear)
    np.testing.assert_array_equal(load_image(clear), [[RED, WHITE]])
    gif = _save(p, tmp_path / "pt.gif", transparency=1)
    np.testing.assert_array_equal(load_image(gif), [[RED, WHITE]])


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((1, 3, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    a[0, 1] = (0, 0, 0, 0)  # fully transparent black becomes white
    a[0, 2] = (0, 0, 0, 128)  # half-transparent black: 255 * 127 / 255 = 127
    out = load_image(_save(Image.fromarray(a, "RGBA"), tmp_path / "a.png"))
    np.testing.assert_array_equal(out, [[RED, WHITE, (127, 127, 127)]])


def test_la_composited_on_white(tmp_path):
    la = Image.fromarray(np.array([[[0, 255], [0, 0], [100, 51]]], np.uint8), "LA")
    out = load_image(_save(la, tmp_path / "la.png"))
    # 100 * 51 / 255 + 255 * 204 / 255 = 20 + 204 = 224
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 224])


def test_cmyk_jpeg(tmp_path):
    path = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=100)
    assert _mode(path) == "CMYK"
    out = load_image(path)
    assert out.shape == (8, 8, 3)
    assert np.abs(out.astype(int) - RED).max() <= 3


def test_ycbcr_in_memory():
    ycc = Image.new("YCbCr", (4, 4), (100, 128, 128))  # neutral chroma -> grey 100
    np.testing.assert_array_equal(ArraySource([ycc]).load(0), np.full((4, 4, 3), 100))


def test_16bit_png_scaled_by_real_range(tmp_path):
    g = np.array([[1000, 2000, 3000]], np.uint16)
    path = _save(Image.fromarray(g), tmp_path / "g16.png")
    assert _mode(path) == "I;16"
    # [min, max] = [1000, 3000] -> [0, 255]; 2000 -> 127.5 -> 128. PIL's convert("L") would give 255 everywhere.
    np.testing.assert_array_equal(load_image(path)[0, :, 0], [0, 128, 255])


def test_16bit_big_endian_tiff(tmp_path):
    g = np.array([[0, 65535], [13107, 65535]], ">u2")
    path = _save(Image.fromarray(g), tmp_path / "g16b.tif")
    assert _mode(path) == "I;16B"
    np.testing.assert_array_equal(load_image(path)[:, :, 0], [[0, 255], [51, 255]])


def test_32bit_int_and_float_tiff(tmp_path):
    i = np.array([[-100, 0, 100000]], np.int32)
    path = _save(Image.fromarray(i), tmp_path / "i.tif")
    assert _mode(path) == "I"
    np.testing.assert_array_equal(load_image(path)[0, :, 0], [0, round(100 * 255 / 100100), 255])
    f = np.array([[0.0, 0.25, 1.0]], np.float32)
    path = _save(Image.fromarray(f), tmp_path / "f.tif")
    assert _mode(path) == "F"
    np.testing.assert_array_equal(load_image(path)[0, :, 0], [0, 64, 255])


def _exif_jpeg(path, orientation):
    """32 wide x 16 high, stored with a red 8x8 block in the top-left corner."""
    a = np.full((16, 32, 3), 255, np.uint8)
    a[:8, :8] = RED
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(a), path, exif=exif, quality=100)


def _is_red(block):
    return np.abs(block.astype(int) - RED).max() < 40


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    out = load_image(_exif_jpeg(tmp_path / "o6.jpg", 6))
    assert out.shape == (32, 16, 3)  # displayed portrait
    assert _is_red(out[1:7, 9:15])  # stored top-left is now top-right
    assert (out[20:, :] > 215).all() and (out[:8, :6] > 215).all()


def test_exif_orientation_3_rotates_180(tmp_path):
    out = load_image(_exif_jpeg(tmp_path / "o3.jpg", 3))
    assert out.shape == (16, 32, 3)
    assert _is_red(out[9:15, 25:31])  # stored top-left is now bottom-right
    assert (out[:6, :] > 215).all()


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in (RED, GREEN, BLUE)]
    path = _save(frames[0], tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
    np.testing.assert_array_equal(load_image(path), np.full((4, 4, 3), RED))


@pytest.mark.skipif(not features.check("webp"), reason="PIL built without WebP")
def test_webp_lossless(tmp_path):
    a = _noise(6, 9)
    np.testing.assert_array_equal(load_image(_save(Image.fromarray(a), tmp_path / "x.webp", lossless=True)), a)


def test_tiff_and_bmp(tmp_path):
    a = _noise(6, 9)
    np.testing.assert_array_equal(load_image(_save(Image.fromarray(a), tmp_path / "x.tiff")), a)
    np.testing.assert_array_equal(load_image(_save(Image.fromarray(a), tmp_path / "x.bmp")), a)


# ---------------------------------------------------------------------------------------------------------------
# load_image: bad inputs


def test_zero_byte_file(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    assert _reason(tmp_path / "z.png") == "empty file (0 bytes)"


def test_missing_file_directory_and_broken_link(tmp_path):
    assert _reason(tmp_path / "nope.png") == "file not found"
    assert "is a directory" in _reason(tmp_path)
    os.symlink(tmp_path / "gone.png", tmp_path / "dead.png")
    assert _reason(tmp_path / "dead.png") == "broken symbolic link"


def test_text_file_named_png_and_random_bytes(tmp_path):
    (tmp_path / "t.png").write_text("this is not an image\n")
    assert _reason(tmp_path / "t.png").startswith("not an image")
    (tmp_path / "r.jpg").write_bytes(np.random.default_rng(1).bytes(500))
    assert _reason(tmp_path / "r.jpg").startswith("not an image")


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file(tmp_path, ext):
    full = tmp_path / f"full.{ext}"
    Image.fromarray(_noise(64, 64)).save(full)
    data = full.read_bytes()
    (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) // 2])
    reason = _reason(tmp_path / f"cut.{ext}")
    assert reason.startswith("corrupt or truncated") and "truncated" in reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_data(tmp_path):
    full = tmp_path / "full.png"
    Image.fromarray(_noise(32, 32)).save(full)
    data = bytearray(full.read_bytes())
    start = data.find(b"IDAT") + 20
    data[start : start + 40] = bytes(b ^ 0xFF for b in data[start : start + 40])
    (tmp_path / "bad.png").write_bytes(bytes(data))
    assert _reason(tmp_path / "bad.png").startswith("corrupt or truncated PNG data")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_permissions(tmp_path):
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "locked.png")
    os.chmod(path, 0)
    try:
        assert _reason(path) == "permission denied"
    finally:
        os.chmod(path, 0o644)


def test_permission_error_on_open_is_reported(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "locked.png")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", refuse, raising=False)
    assert _reason(path) == "permission denied"


def test_max_pixels_guard(tmp_path):
    path = _save(Image.new("RGB", (20, 20)), tmp_path / "x.png")
    reason = _reason(path, max_pixels=399)
    assert "20x20 = 400 pixels exceeds max_pixels=399" in reason and "decompression bomb" in reason
    assert load_image(path, max_pixels=400).shape == (20, 20, 3)


def test_header_claiming_huge_size(tmp_path):
    # 1e10 pixels is past twice PIL's limit: PIL refuses at open, and that becomes an ImageError.
    assert "decompression bomb" in _reason(_png_header_only(tmp_path / "huge.png", 100_000, 100_000))
    # 1e8 pixels is in PIL's warning band: no warning escapes, our guard refuses it before any decoding
    # (the file holds no pixels, so decoding would have reported truncation instead).
    path = _png_header_only(tmp_path / "big.png", 10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reason = _reason(path)
    assert "10000x10000 = 100,000,000 pixels exceeds max_pixels=89,478,485" in reason


# ---------------------------------------------------------------------------------------------------------------
# Geometry


def test_pad_to_square_centres_with_white():
    a = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    sq = pad_to_square(a)
    assert sq.shape == (5, 5, 3) and sq.dtype == np.uint8
    # difference 3: one row above, two below
    np.testing.assert_array_equal(sq[1:3], a)
    assert (sq[0] == 255).all() and (sq[3:] == 255).all()
    b = np.zeros((3, 2, 3), np.uint8)
    sq = pad_to_square(b, fill=7)
    assert sq.shape == (3, 3, 3)
    np.testing.assert_array_equal(sq[:, :2], b)  # difference 1: the extra column goes on the right
    assert (sq[:, 2] == 7).all()
    c = np.zeros((4, 4, 3), np.uint8)
    np.testing.assert_array_equal(pad_to_square(c), c)
    d = np.zeros((2, 6, 3), np.uint8)
    sq = pad_to_square(d)
    assert (sq[:2] == 255).all() and (sq[2:4] == 0).all() and (sq[4:] == 255).all()


def test_prepare_matches_pad_then_pil_bicubic():
    a = _noise(30, 50)
    canvas = Image.new("RGB", (50, 50), WHITE)
    canvas.paste(Image.fromarray(a), (0, 10))
    expected = np.asarray(canvas.resize((20, 20), Image.Resampling.BICUBIC))
    out = prepare(a, 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_prepare_keeps_aspect_ratio_no_crop():
    wide = np.zeros((10, 40, 3), np.uint8)  # black bar, 4:1
    out = prepare(wide, 40)  # 40x40 canvas, bar in rows 15..24, no resize needed
    assert (out[:15] == 255).all() and (out[25:] == 255).all() and (out[15:25] == 0).all()
    small = prepare(wide, 20)  # bar in rows 7.5..12.5 after halving
    assert (small[:6] == 255).all() and (small[14:] == 255).all() and (small[8:12] == 0).all()
    assert (small[8:12, 1:19] == 0).all()  # full width kept: nothing cropped


def test_prepare_multi_pads_once_same_as_prepare():
    a = _noise(17, 9)
    outs = prepare_multi(a, (8, 17, 32))
    assert [o.shape for o in outs] == [(8, 8, 3), (17, 17, 3), (32, 32, 3)]
    for o, s in zip(outs, (8, 17, 32)):
        np.testing.assert_array_equal(o, prepare(a, s))
    np.testing.assert_array_equal(outs[1], pad_to_square(a))


def test_prepare_rejects_bad_arrays():
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        prepare(np.zeros((4, 4), np.uint8), 4)
    with pytest.raises(ValueError, match="float32"):
        prepare(np.zeros((4, 4, 3), np.float32), 4)
    with pytest.raises(ValueError, match="sizes"):
        prepare_multi(np.zeros((4, 4, 3), np.uint8), ())


# ---------------------------------------------------------------------------------------------------------------
# Files


def test_list_images(tmp_path):
    for rel in ["b.PNG", "a/z.jpeg", "a/c/d.Tif", "a/notes.txt", "x.webp", ".hidden.png", ".git/y.png", "a/.k/q.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a loop back to the root
    os.symlink(tmp_path / "a", tmp_path / "same_as_a")  # a second path to a folder already listed
    os.symlink(tmp_path / "missing.png", tmp_path / "dead.png")  # reported later by load_image
    assert list_images(tmp_path) == ["a/c/d.Tif", "a/z.jpeg", "b.PNG", "dead.png", "x.webp"]
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


def test_list_images_follows_link_to_outside_folder(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "m.png").write_bytes(b"x")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "root" / "linked")
    assert list_images(tmp_path / "root") == ["linked/m.png"]


def test_list_images_bad_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        list_images(tmp_path / "f.png")


LOOP = f"symbolic link loop ({os.strerror(errno.ELOOP)})"


def _loops(root):
    """Readable images beside an image-named link loop, a folder-like link loop and a link back up the tree."""
    for rel in ["good.png", "sub/ok.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    os.symlink("b.png", root / "a.png")
    os.symlink("a.png", root / "b.png")
    os.symlink("ring2", root / "ring")
    os.symlink("ring", root / "ring2")
    os.symlink("..", root / "sub" / "up")  # visited once, not a failure


def test_list_images_records_symlink_loops_and_goes_on(tmp_path):
    _loops(tmp_path)
    failures = FailureLog()
    assert list_images(tmp_path, failures) == ["good.png", "sub/ok.jpg"]
    assert failures.failures == [("a.png", LOOP), ("b.png", LOOP), ("ring", LOOP), ("ring2", LOOP)]


def test_list_images_without_a_failure_log_warns_naming_each_skipped_entry(tmp_path):
    _loops(tmp_path)
    with pytest.warns(UserWarning) as caught:
        assert list_images(tmp_path) == ["good.png", "sub/ok.jpg"]
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / name}: {LOOP}; skipped" for name in ("a.png", "b.png", "ring", "ring2")
    ]
    assert {w.filename for w in caught} == {__file__}  # points at the caller of list_images


NOBODY = 65534


@pytest.fixture
def shared_tmp():
    """A fresh folder in the system temp dir that any user can reach (pytest's tmp_path is private to its owner)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="tmrjax-test-"))
    path.chmod(0o755)
    yield path
    for directory, names, _ in os.walk(path):  # unlock what a test locked (before os.walk enters it), then remove
        for name in names:
            os.chmod(os.path.join(directory, name), 0o755)
    shutil.rmtree(path)


def _list_unprivileged(root, locked) -> dict:
    """`list_images(root, FailureLog())` in a forked child, as user nobody when we are root (root reads a folder
    whatever its mode). Returns {"found", "failures"} or {"error", "message"}; skips where `locked` stays readable."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)  # JAX's; the child never touches JAX
        pid = os.fork()
    if pid == 0:  # the child answers through the pipe and never returns into pytest
        try:
            os.close(read_end)
            result = _walk_in_child(root, locked)
        except BaseException:  # noqa: BLE001 -- reported to the parent, which fails the test with it
            result = {"crash": traceback.format_exc()}
        try:
            with os.fdopen(write_end, "w") as out:
                json.dump(result, out)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reply:
        text = reply.read()
    os.waitpid(pid, 0)
    result = json.loads(text)
    if "skip" in result:
        pytest.skip(result["skip"])
    if "crash" in result:
        pytest.fail(f"list_images failed in the child:\n{result['crash']}")
    return result


def _walk_in_child(root, locked) -> dict:
    if os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        except PermissionError as e:
            return {"skip": f"root reads folders whatever their mode, and cannot switch to uid {NOBODY} here: {e}"}
    if not os.access(os.path.dirname(locked), os.R_OK | os.X_OK):
        return {"skip": f"uid {os.getuid()} cannot reach the test folder {os.path.dirname(locked)}"}
    if os.access(locked, os.R_OK):
        return {"skip": f"uid {os.getuid()} reads {locked} despite chmod 000"}
    failures = FailureLog()
    try:
        found = list_images(root, failures)
    except OSError as e:
        return {"error": type(e).__name__, "message": str(e)}
    return {"found": found, "failures": [list(f) for f in failures.failures]}


def test_list_images_records_an_unreadable_folder_and_lists_the_rest(shared_tmp):
    for rel in ["a/1.png", "locked/2.png", "locked/deeper/3.png", "z/4.png", "5.png"]:
        (shared_tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (shared_tmp / rel).write_bytes(b"x")
    os.chmod(shared_tmp / "locked", 0)
    result = _list_unprivileged(shared_tmp, shared_tmp / "locked")
    assert result == {
        "found": ["5.png", "a/1.png", "z/4.png"],
        "failures": [["locked", "folder cannot be read (permission denied); its files are skipped"]],
    }


def test_list_images_unreadable_root_raises_naming_it(shared_tmp):
    root = shared_tmp / "root"
    root.mkdir()
    (root / "1.png").write_bytes(b"x")
    os.chmod(root, 0)
    result = _list_unprivileged(root, root)
    assert result == {"error": "PermissionError", "message": f"{root}: image folder cannot be read (permission denied)"}


def _mixed_folder(root):
    """Good and bad files interleaved; returns (good relative paths in order, {bad path: reason prefix})."""
    good, bad = [], {}
    for i in range(8):
        rel = f"g{i:02d}.png" if i % 3 else f"sub/g{i:02d}.jpg"
        (root / rel).parent.mkdir(exist_ok=True)
        h, w = (12 + i, 20) if i % 2 else (20, 9 + i)
        Image.fromarray(_noise(h, w, seed=i)).save(root / rel)
        good.append(rel)
    (root / "g03b_empty.png").write_bytes(b"")
    bad["g03b_empty.png"] = "empty file"
    (root / "g05b_text.png").write_text("hello")
    bad["g05b_text.png"] = "not an image"
    data = (root / "g04.png").read_bytes()
    (root / "g06b_cut.png").write_bytes(data[: len(data) // 2])
    bad["g06b_cut.png"] = "corrupt or truncated"
    return good, bad


def test_iter_batches_skips_bad_files_and_keeps_order(tmp_path):
    good, bad = _mixed_folder(tmp_path)
    paths = list_images(tmp_path)
    good_in_order = [p for p in paths if p in good]
    assert sorted(paths) == sorted(good + list(bad)) and len(good_in_order) == 8
    failures = FailureLog()
    batches = list(iter_batches(PathSource(paths, tmp_path), (16, 8), 3, failures, workers=2))
    assert len(batches) == 3
    for b in batches:
        assert isinstance(b, Batch)
        assert [x.shape for x in b.images] == [(3, 16, 16, 3), (3, 8, 8, 3)]
        assert all(x.dtype == np.uint8 for x in b.images)
        assert b.valid.dtype == bool and b.valid.shape == (3,)
        np.testing.assert_array_equal(b.valid, np.arange(3) < len(b.ids))
    assert [i for b in batches for i in b.ids] == good_in_order
    assert [len(b.ids) for b in batches] == [3, 3, 2]
    last = batches[-1]
    assert (last.images[0][2] == 255).all() and (last.images[1][2] == 255).all()  # white padding
    for b in batches:
        for row, rel in enumerate(b.ids):
            expected = prepare_multi(load_image(tmp_path / rel), (16, 8))
            for k in range(2):
                np.testing.assert_array_equal(b.images[k][row], expected[k])
    assert [p for p, _ in failures.failures] == [p for p in paths if p in bad]
    for path, reason in failures.failures:
        assert reason.startswith(bad[path]), (path, reason)
    summary = failures.summary().splitlines()
    assert summary[0] == "3 files skipped:"
    assert summary[1:] == [f"  {p}: {r}" for p, r in failures.failures]
    failures.write_json(tmp_path / "failures.json")
    doc = json.loads((tmp_path / "failures.json").read_text())
    assert doc["skipped"] == 3
    assert [(f["path"], f["reason"]) for f in doc["failures"]] == failures.failures


def test_iter_batches_records_unexpected_errors(tmp_path, monkeypatch):
    for i in range(4):
        Image.new("RGB", (3, 3), (i, i, i)).save(tmp_path / f"{i}.png")
    real = images.load_image

    def flaky(path, **kw):
        if str(path).endswith("2.png"):
            raise RuntimeError("boom")
        return real(path, **kw)

    monkeypatch.setattr(sources, "load_image", flaky)
    failures = FailureLog()
    batches = list(iter_batches(PathSource(list_images(tmp_path), tmp_path), (3,), 4, failures, workers=3))
    assert [b.ids for b in batches] == [["0.png", "1.png", "3.png"]]
    assert failures.failures == [("2.png", "unexpected RuntimeError: boom")]


def test_iter_batches_all_bad_and_early_stop(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    failures = FailureLog()
    assert list(iter_batches(PathSource(["a.png", "missing.png"], tmp_path), (4,), 2, failures)) == []
    assert [r for _, r in failures.failures] == ["empty file (0 bytes)", "file not found"]
    assert FailureLog().summary() == "0 files skipped."
    for i in range(20):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i:02d}.png")
    stream = iter_batches(PathSource([f"{i:02d}.png" for i in range(20)], tmp_path), (4,), 2, failures, workers=2)
    assert next(stream).ids == ["00.png", "01.png"]
    stream.close()  # shuts the pool down without hanging


def test_iter_batches_checks_arguments_eagerly(tmp_path):
    empty = PathSource([], tmp_path)
    with pytest.raises(ValueError, match="sizes"):
        iter_batches(empty, (), 2, FailureLog())
    with pytest.raises(ValueError, match="batch_size"):
        iter_batches(empty, (4,), 0, FailureLog())
    with pytest.raises(ValueError, match="workers"):
        iter_batches(empty, (4,), 2, FailureLog(), workers=0)


def test_in_memory_inputs_of_every_kind(tmp_path):
    arr = _noise(6, 6)
    grey = np.full((6, 6), 40, np.uint8)
    rgba = np.zeros((6, 6, 4), np.uint8)
    path = _save(Image.new("RGB", (6, 6), BLUE), tmp_path / "b.png")
    batches = list(iter_batches(ArraySource([arr, Image.new("RGB", (6, 6), RED), path, grey, rgba]), (6,), 2,
                                FailureLog()))
    assert [b.ids for b in batches] == [["0", "1"], ["2", "3"], ["4"]]
    got = np.concatenate([b.images[0][: len(b.ids)] for b in batches])
    expected = [arr, np.full((6, 6, 3), RED), np.full((6, 6, 3), BLUE), np.full((6, 6, 3), 40),
                np.full((6, 6, 3), 255)]
    np.testing.assert_array_equal(got, np.stack(expected))
    np.testing.assert_array_equal(batches[-1].valid, [True, False])


def test_a_bad_in_memory_input_raises_naming_it(tmp_path):
    with pytest.raises(ImageError, match=r"^images\[1\]: unsupported array"):
        ArraySource([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.complex64)]).load(1)
    with pytest.raises(ImageError, match=r"^images\[0\]: expected a numpy array"):
        ArraySource([io.BytesIO(b"")]).load(0)
    missing = str(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="missing.png: file not found"):
        ArraySource([missing]).load(0)
