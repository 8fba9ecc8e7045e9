"""Folder datasets: preflight scan, bad-file policies, colour conversion, pixel cap, the decode cache."""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from cnnlab import cli
from cnnlab.config import DataConfig
from cnnlab.data import FolderOptions, load_folder, load_split, scan_folder
from cnnlab.data import folder as folder_module
from cnnlab.errors import DataError
from tests.test_data_support import isolate

BAD_FILES = {"cat/half.jpg", "cat/zero.jpg", "cat/text.png", "cat/huge.png"}


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate(monkeypatch, tmp_path)


def _solid(mode: str, colour: object, size: tuple[int, int] = (12, 10)) -> Image.Image:
    return Image.new(mode, size, colour)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims width x height, followed by a tiny IDAT (a decompression-bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _build_fixture(root: Path) -> Path:
    """Two classes of real images in every colour mode, plus every kind of file a folder must survive."""
    cat, dog = root / "cat", root / "dog"
    for folder in (cat, dog, root / ".hidden", root / "empty"):
        folder.mkdir(parents=True)
    (root / ".hidden" / "ghost.png").write_bytes(b"")
    (root / "empty" / ".gitkeep").write_bytes(b"")
    (cat / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (cat / "notes.txt").write_text("not an image")
    _solid("RGB", (10, 200, 30)).save(cat / "rgb.png")
    _solid("RGBA", (255, 0, 0, 0)).save(cat / "rgba_clear.png")
    _solid("RGBA", (0, 0, 255, 255)).save(cat / "rgba_opaque.png")
    _solid("LA", (0, 0)).save(cat / "la_clear.png")
    palette = _solid("P", 1)
    palette.putpalette([0, 255, 0, 255, 0, 255])
    palette.save(cat / "p_clear.png", transparency=1)
    _solid("CMYK", (0, 255, 255, 0)).save(cat / "cmyk.jpg", quality=95)
    Image.fromarray(np.full((10, 12), 65535, np.uint16)).save(cat / "white16.png")
    Image.fromarray(np.full((10, 12), 32768, np.uint16)).save(cat / "mid16.png")
    full_jpeg = cat / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(full_jpeg)
    (cat / "half.jpg").write_bytes(full_jpeg.read_bytes()[: full_jpeg.stat().st_size // 2])
    (cat / "zero.jpg").write_bytes(b"")
    (cat / "text.png").write_text("I am text with an image name")
    _png_header_only(cat / "huge.png", 30000, 30000)
    for index in range(6):
        _solid("RGB", (index * 40, 100, 100), (20, 14)).save(dog / f"dog{index}.jpg")
    return root


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    return _build_fixture(tmp_path / "photos")


def _pixels(image_set: object, stem: str) -> torch.Tensor:
    """The float [0, 1] pixels of the image whose file stem is `stem`."""
    index = image_set.ids.index(stem)
    return image_set.images[index].float() / 255


def test_scan_ignores_hidden_counts_non_images_and_rejects_empty_class(photo_folder: Path) -> None:
    scan = scan_folder(photo_folder)
    assert scan.class_names == ("cat", "dog", "empty")
    assert set(scan.hidden) == {".hidden", "cat/.DS_Store", "empty/.gitkeep"}
    assert scan.non_images == ("cat/notes.txt",) and scan.empty_classes == ("empty",)
    assert len(scan.files) == 13 + 6
    with pytest.raises(DataError, match=r"empty class folders \(no image files\): empty"):
        load_split(DataConfig(name=f"folder:{photo_folder}"), "train")


def test_default_policy_exits_2_naming_exactly_the_bad_files(
    photo_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    (photo_folder / "empty" / ".gitkeep").unlink()
    (photo_folder / "empty").rmdir()
    assert cli.main(["data", f"folder:{photo_folder}", "--image-size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "4 bad image file(s)" in err and "data.bad_images=skip" in err
    named = set(re.findall(r"(cat/\S+\.(?:jpg|png)) \(", err))
    assert named == BAD_FILES


def test_skip_excludes_bad_files_before_splitting_and_writes_their_list(
    photo_folder: Path, isolated: Path
) -> None:
    (photo_folder / "empty" / ".gitkeep").unlink()
    (photo_folder / "empty").rmdir()
    config = DataConfig(name=f"folder:{photo_folder}", image_size=8, bad_images="skip")
    train, test = load_split(config, "train"), load_split(config, "test")
    assert len(train) + len(test) == 9 + 6 and len(test) == 3
    assert not {Path(f).stem for f in BAD_FILES} & set(train.ids + test.ids)
    assert {rel for rel, _ in train.bad_files} == BAD_FILES
    listed = list((isolated / "folders").glob("*.bad_images.txt"))
    assert len(listed) == 1
    assert {line.split("\t")[0] for line in listed[0].read_text().splitlines()} == BAD_FILES
    assert train.shape == (3, 8, 8) and train.class_names == ("cat", "dog")


def test_colour_modes_are_converted_correctly(photo_folder: Path) -> None:
    (photo_folder / "empty" / ".gitkeep").unlink()
    (photo_folder / "empty").rmdir()
    loaded = load_folder(photo_folder, FolderOptions(image_size=4, bad_images="skip")).image_set
    white = torch.ones(3, 4, 4)
    assert torch.equal(_pixels(loaded, "white16"), white)  # 16-bit 65535 -> 1.0
    assert torch.allclose(_pixels(loaded, "mid16"), torch.full((3, 4, 4), 0.5), atol=0.005)  # 32768 -> ~0.5
    for transparent in ("rgba_clear", "la_clear", "p_clear"):
        assert torch.equal(_pixels(loaded, transparent), white), transparent  # background shows through
    assert _pixels(loaded, "rgba_opaque")[:, 0, 0].tolist() == [0.0, 0.0, 1.0]
    assert torch.allclose(_pixels(loaded, "rgb")[:, 0, 0], torch.tensor([10, 200, 30]) / 255)
    red = _pixels(loaded, "cmyk")[:, 0, 0]
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1
    black = load_folder(photo_folder, FolderOptions(image_size=4, bad_images="skip", background=(0, 0, 0)))
    assert torch.equal(_pixels(black.image_set, "rgba_clear"), torch.zeros(3, 4, 4))


def test_oversized_header_is_rejected_without_decoding(
    photo_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded_files: list[str] = []
    original_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        loaded_files.append(Path(getattr(self, "filename", "")).name)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    (photo_folder / "empty" / ".gitkeep").unlink()
    (photo_folder / "empty").rmdir()
    result = load_folder(photo_folder, FolderOptions(image_size=4, bad_images="skip"))
    reasons = dict(result.bad_files)
    assert reasons["cat/huge.png"].startswith("header claims 900000000 pixels, over the cap of")
    assert "huge.png" not in loaded_files
    assert "rgb.png" in loaded_files
    loaded_files.clear()
    capped = load_folder(photo_folder, FolderOptions(image_size=4, bad_images="skip", max_pixels=150))
    assert dict(capped.bad_files)["dog/dog0.jpg"] == "header claims 20x14 pixels, over the cap of 150"
    assert "dog0.jpg" not in loaded_files and "rgb.png" in loaded_files  # 12x10 is under the cap


def test_second_load_decodes_nothing_and_a_changed_file_is_decoded_again(
    photo_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (photo_folder / "empty" / ".gitkeep").unlink()
    (photo_folder / "empty").rmdir()
    decoded: list[str] = []
    original = folder_module.decode_image

    def counting(path: Path, **kwargs: object) -> np.ndarray:
        decoded.append(f"{path.parent.name}/{path.name}")
        return original(path, **kwargs)

    monkeypatch.setattr(folder_module, "decode_image", counting)
    options = FolderOptions(image_size=6, bad_images="skip")
    first = load_folder(photo_folder, options)
    assert len(decoded) == 19 and first.decoded == 19
    decoded.clear()
    second = load_folder(photo_folder, options)
    assert decoded == [] and second.decoded == 0
    assert (
        torch.equal(first.image_set.images, second.image_set.images) and second.bad_files == first.bad_files
    )
    changed = photo_folder / "dog" / "dog3.jpg"
    _solid("RGB", (255, 255, 255), (20, 14)).save(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = load_folder(photo_folder, options)
    assert decoded == ["dog/dog3.jpg"] and third.decoded == 1
    assert torch.equal(_pixels(third.image_set, "dog3"), torch.ones(3, 6, 6))
    decoded.clear()
    assert load_folder(photo_folder, FolderOptions(image_size=7, bad_images="skip")).decoded == 19  # new size


def test_symlink_leaving_the_folder_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "linked"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for index in range(2):
            _solid("RGB", (index, 0, 0)).save(root / name / f"{name}{index}.png")
    outside = tmp_path / "outside.png"
    _solid("RGB", (1, 2, 3)).save(outside)
    (root / "a" / "escape.png").symlink_to(outside)
    (root / "b" / "inside.png").symlink_to(root / "b" / "b0.png")
    scan = scan_folder(root)
    assert scan.outside_links == ("a/escape.png",) and "b/inside.png" in dict(scan.files)
    with pytest.raises(DataError, match=r"symlinks leaving the folder: a/escape.png"):
        load_split(DataConfig(name=f"folder:{root}"), "train")


def test_train_and_test_subfolders_are_used_as_the_splits(tmp_path: Path) -> None:
    root = tmp_path / "split"
    for part, count in (("train", 3), ("test", 2)):
        for name in ("x", "y"):
            (root / part / name).mkdir(parents=True)
            for index in range(count):
                _solid("L", index * 50).save(root / part / name / f"{part}{index}.png")
    config = DataConfig(name=f"folder:{root}", image_size=5)
    train, test = load_split(config, "train"), load_split(config, "test")
    assert (len(train), len(test)) == (6, 4) and test.class_names == ("x", "y") and test.shape == (3, 5, 5)
    assert set(test.ids) == {"test0", "test1"}


def test_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder .*nowhere not found"):
        load_split(DataConfig(name=f"folder:{tmp_path / 'nowhere'}"), "train")


def _two_class_folder(root: Path, count: int = 3) -> Path:
    """root/cat and root/dog with `count` small PNGs each (red cats, blue dogs)."""
    for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        for index in range(count):
            _solid("RGB", colour, (8, 8)).save(root / name / f"{index}.png")
    return root


def test_kaggle_layout_with_unlabeled_test_images_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "k"
    _two_class_folder(root / "train")
    (root / "test").mkdir()
    for index in range(4):
        _solid("RGB", (0, 0, 0), (8, 8)).save(root / "test" / f"{index}.png")
    assert cli.main(["data", f"folder:{root}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "test/ holds no class subfolders" in err and f"cnnlab predict --images {root / 'test'}" in err
    for index in range(4):
        (root / "test" / f"{index}.png").unlink()
    (root / "test").rmdir()
    with pytest.raises(DataError, match=r"train/ with class subfolders but no test/.*data.test_fraction"):
        load_split(DataConfig(name=f"folder:{root}"), "train")


def test_entries_beside_train_and_test_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "split"
    _two_class_folder(root / "train")
    _two_class_folder(root / "test", count=2)
    _two_class_folder(root / "val", count=1)
    _solid("RGB", (0, 0, 0), (8, 8)).save(root / "stray.png")
    (root / ".DS_Store").write_bytes(b"")
    with caplog.at_level("WARNING"):
        train = load_split(DataConfig(name=f"folder:{root}", image_size=4), "train")
    assert len(train) == 6
    assert (
        "skipped 2 entries beside train/ and test/ (not part of the dataset): stray.png, val" in caplog.text
    )
    assert "ignored 1 hidden entries: .DS_Store" in caplog.text


def test_fifo_with_an_image_suffix_is_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _two_class_folder(tmp_path / "f")
    os.mkfifo(root / "cat" / "pipe.png")
    scan = scan_folder(root)
    assert scan.special_files == ("cat/pipe.png",) and "cat/pipe.png" not in dict(scan.files)
    with caplog.at_level("WARNING"):
        loaded = load_folder(root, FolderOptions(image_size=4))
    assert len(loaded.image_set) == 6 and "not regular files" in caplog.text and "cat/pipe.png" in caplog.text


def test_files_swapped_with_the_same_size_and_mtime_are_decoded_again(tmp_path: Path) -> None:
    root = tmp_path / "swap"
    for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        _solid("RGB", colour, (8, 8)).save(root / name / "0.bmp")
        _solid("RGB", colour, (8, 8)).save(root / name / "1.bmp")
    cat, dog = root / "cat" / "0.bmp", root / "dog" / "0.bmp"
    for path in (cat, dog):
        os.utime(path, ns=(10**18, 10**18))
    options = FolderOptions(image_size=4)
    first = load_folder(root, options)
    assert first.decoded == 4 and load_folder(root, options).decoded == 0  # unchanged files: cache only
    cat.rename(root / "tmp.bmp")
    dog.rename(cat)
    (root / "tmp.bmp").rename(dog)
    swapped = load_folder(root, options)
    assert swapped.decoded == 2
    cats = swapped.image_set.images[swapped.image_set.labels == 0].float() / 255
    assert cats[swapped.image_set.ids[:2].index("0"), :, 0, 0].tolist() == [0.0, 0.0, 1.0]  # now blue


def test_large_rgba_is_composited_without_float_copies() -> None:
    import tracemalloc

    image = Image.new("RGBA", (2000, 1500), (255, 0, 0, 0))
    tracemalloc.start()
    try:
        rgb = folder_module.to_rgb(image, (0, 255, 0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rgb.shape == (1500, 2000, 3) and rgb[0, 0].tolist() == [0, 255, 0]
    assert peak < 3 * rgb.nbytes  # float32 compositing needed >= 16 bytes a pixel (5x the result)


def test_sixteen_bit_grey_with_a_transparent_colour_shows_the_background(tmp_path: Path) -> None:
    grey = np.full((6, 6), 1000, np.uint16)
    grey[0, 0] = 65535
    Image.fromarray(grey).save(tmp_path / "t16.png", transparency=1000)
    with Image.open(tmp_path / "t16.png") as image:
        image.load()
        rgb = folder_module.to_rgb(image, (0, 255, 0))
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[1, 1].tolist() == [0, 255, 0]


def _peak_decode_megabytes(path: Path, size: int) -> float:
    """Peak memory (MB) a fresh process adds while decoding one file (ru_maxrss: Pillow's buffers too)."""
    import subprocess
    import sys

    script = (
        "import resource, sys; from pathlib import Path; from cnnlab.data.folder import decode_image; "
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        f"decode_image(Path(sys.argv[1]), size={size}); "
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_huge_png_is_reduced_before_its_copies_are_made(tmp_path: Path, mode: str) -> None:
    width, height = 5000, 4000  # 20 M pixels: Pillow holds 80 MB, RGB or RGBA
    pixels = np.zeros((height, width, len(mode)), np.uint8)
    pixels[..., 0] = np.arange(width, dtype=np.uint8)[None]
    pixels[..., -1] = 200
    Image.fromarray(pixels, mode).save(tmp_path / "huge.png", compress_level=1)
    full = width * height * 4 / 2**20
    # decoded at full size, then copied by each conversion step, it took 3.3 (RGB) to 4.3 (RGBA) times that
    assert _peak_decode_megabytes(tmp_path / "huge.png", 32) < (1.5 if mode == "RGB" else 2.5) * full


def test_an_early_reduced_image_matches_its_full_size_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels = np.zeros((600, 900, 3), np.uint8)
    pixels[:, :450] = (250, 20, 20)
    pixels[:300, 450:] = (20, 20, 250)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to view
    image.save(tmp_path / "rotated.png", exif=exif.tobytes())
    full = folder_module.decode_image(tmp_path / "rotated.png", size=16)
    monkeypatch.setattr(folder_module, "EARLY_REDUCE_PIXELS", 1000)
    reduced = folder_module.decode_image(tmp_path / "rotated.png", size=16)  # reduced by 600 // 64 = 9
    assert np.abs(full.astype(int) - reduced.astype(int)).max() <= 8
    upright = [full[:, row, col].tolist() for row, col in ((0, 0), (0, 15), (15, 0), (15, 15))]
    assert upright == [[250, 20, 20], [250, 20, 20], [0, 0, 0], [20, 20, 250]]  # red on top, blue right


def test_an_image_near_the_target_size_decodes_exactly_as_pillows_resize(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (200, 300, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "near.png")
    expected = Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR, box=(50, 0, 250, 200))
    decoded = folder_module.decode_image(tmp_path / "near.png", size=32)
    assert np.array_equal(decoded, np.asarray(expected).transpose(2, 0, 1))


@pytest.mark.parametrize("pixels", [(12, 10), (20, 14)])  # over Pillow's warning level; over its error level
def test_pillows_decompression_bomb_check_makes_a_bad_file_like_any_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pixels: tuple[int, int]
) -> None:
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's limit below cnnlab's cap
    root = tmp_path / "bombs"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        _solid("RGB", (0, 0, 0), (8, 8)).save(root / name / "small.png")
    _solid("RGB", (0, 0, 0), pixels).save(root / "cat" / "bomb.png")
    filters = list(warnings.filters)
    loaded = load_folder(root, FolderOptions(image_size=4, bad_images="skip", max_pixels=10**6))
    claimed = pixels[0] * pixels[1]
    assert loaded.bad_files == (("cat/bomb.png", f"header claims {claimed} pixels, over the cap of 100"),)
    assert len(loaded.image_set) == 2 and warnings.filters == filters
    with pytest.raises(DataError, match=r"folder .*bombs.*: 1 bad image file\(s\): cat/bomb.png \(header"):
        load_split(DataConfig(name=f"folder:{root}", image_size=4, bad_images="error"), "train")


def test_an_unwritable_cache_only_warns_even_when_bad_files_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = _two_class_folder(tmp_path / "f")
    (root / "cat" / "zero.png").write_bytes(b"")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CNNLAB_CACHE", str(blocker))  # nothing can be written below it
    with caplog.at_level("WARNING"):
        train = load_split(DataConfig(name=f"folder:{root}", image_size=4, bad_images="skip"), "train")
    assert (
        len(train)
        + len(load_split(DataConfig(name=f"folder:{root}", image_size=4, bad_images="skip"), "test"))
        == 6
    )
    assert train.bad_files == (("cat/zero.png", "empty file"),)
    assert "set $CNNLAB_CACHE to a writable folder" in caplog.text
    assert "excluded 1 bad image file(s): cat/zero.png (list not written" in caplog.text


def test_folder_problems_say_how_to_fix_them_and_hostile_names_stay_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = _two_class_folder(tmp_path / "f", count=5)
    (root / "empty").mkdir()
    with pytest.raises(
        DataError, match=r"empty class folders \(no image files\): empty \(add images to them"
    ):
        load_split(DataConfig(name=f"folder:{root}", image_size=4), "train")
    (root / "empty").rename(root / "new\nline")
    for index in range(5):
        _solid("RGB", (0, 0, 0)).save(root / "new\nline" / f"{index}\n.png")
    assert cli.main(["data", f"folder:{root}", "--image-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "new\\nline (4)" in printed and "\nline" not in printed


def _tiff_with_strip_offsets_as_a_fraction(path: Path) -> None:
    """A TIFF whose StripOffsets tag has the type SRATIONAL: Pillow's load raises TypeError on it."""
    _solid("RGB", (0, 0, 0), (4, 4)).save(path, format="TIFF")
    data = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == 273:  # StripOffsets
            struct.pack_into("<H", data, at + 2, 10)  # SRATIONAL
    path.write_bytes(bytes(data))


def _jpeg_with_text_in_a_rational_exif_tag(path: Path) -> None:
    """A rotated JPEG whose EXIF WhitePoint (a RATIONAL tag) holds text: Pillow's exif_transpose raises
    TypeError when it writes the EXIF back."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    exif[0x010F] = "cam"  # Make, ASCII
    _solid("RGB", (0, 0, 0), (4, 4)).save(path, format="JPEG", exif=exif)
    data = path.read_bytes()
    order = ">" if b"Exif\x00\x00MM" in data else "<"
    make, white_point = (struct.pack(f"{order}HH", tag, 2) for tag in (0x010F, 0x013E))  # tag, type ASCII
    assert data.count(make) == 1
    path.write_bytes(data.replace(make, white_point))


@pytest.mark.parametrize(
    "craft", [_tiff_with_strip_offsets_as_a_fraction, _jpeg_with_text_in_a_rational_exif_tag]
)
def test_a_crafted_file_that_makes_pillow_raise_type_error_is_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, craft: object
) -> None:
    """Pillow's plugins raise more than OSError on damaged files; each used to end in a traceback, exit 1."""
    root = _two_class_folder(tmp_path / "f")
    craft(root / "cat" / "crafted.tif")
    assert cli.main(["data", f"folder:{root}", "--image-size", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 bad image file(s): cat/crafted.tif (TypeError: " in err
    loaded = load_folder(root, FolderOptions(image_size=4, bad_images="skip"))
    assert [rel for rel, _ in loaded.bad_files] == ["cat/crafted.tif"] and len(loaded.image_set) == 6


@pytest.mark.parametrize("damage", ["smaller images", "float images"])
def test_a_decode_cache_holding_images_of_another_shape_or_type_is_rebuilt(
    tmp_path: Path, isolated: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """Such a cache used to serve 4x4 images for --image-size 8, or crash np.stack once a file was added."""
    root = _two_class_folder(tmp_path / "f")
    options = FolderOptions(image_size=8)
    first = load_folder(root, options)
    (cache_file,) = (isolated / "folders").glob("*.pt")
    payload = torch.load(cache_file, weights_only=True)
    damaged = payload["images"][:, :, :4, :4]
    payload["images"] = damaged.clone() if damage == "smaller images" else damaged.float()
    torch.save(payload, cache_file)
    with caplog.at_level("WARNING"):
        again = load_folder(root, options)
    assert again.decoded == 6 and torch.equal(again.image_set.images, first.image_set.images)
    assert "ignoring a malformed decode cache" in caplog.text and "not uint8 (N, 3, 8, 8)" in caplog.text
    _solid("RGB", (0, 255, 0), (8, 8)).save(root / "cat" / "new.png")
    torch.save(payload, cache_file)
    assert load_folder(root, options).image_set.shape == (3, 8, 8)


def test_cnnlab_data_names_the_bad_files_of_train_and_test_folders_from_the_root(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """train/dog/0.png and test/dog/0.png used to be listed once, as dog/0.png: 2 files excluded of 3."""
    root = tmp_path / "split"
    for part in ("train", "test"):
        _two_class_folder(root / part, count=3)
        (root / part / "dog" / "0.png").write_bytes(b"")
    (root / "test" / "cat" / "2.png").write_bytes(b"")
    assert cli.main(["data", f"folder:{root}", "--image-size", "4", "--bad-images", "skip"]) == 0
    printed = capsys.readouterr().out
    assert (
        "excluded 3 bad image file(s) (data.bad_images=skip): train/dog/0.png (empty file); test/cat/2.png "
        "(empty file); test/dog/0.png (empty file)" in printed
    )


def test_a_runs_bad_images_list_names_the_excluded_files_of_train_and_test_folders_from_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's bad_images.txt used to list the train folder's files only, relative to train/ (dog/0.png):
    an image excluded from the test split went unrecorded in the run folder."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "split"
    for part, count in (("train", 10), ("test", 4)):
        _two_class_folder(root / part, count=count)
        (root / part / "dog" / "0.png").write_bytes(b"")
    (root / "test" / "cat" / "2.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    train = ["train", "--model", "lenet5", "--data", f"folder:{root}", "--epochs", "1", "--out", str(out)]
    assert cli.main([*train, "--set", "data.image_size=16", "--set", "data.bad_images=skip"]) == 0
    listed = [line.split("\t")[0] for line in (out / "bad_images.txt").read_text().splitlines()]
    assert sorted(listed) == ["test/cat/2.png", "test/dog/0.png", "train/dog/0.png"]


def test_a_dangling_symlink_is_reported_as_a_missing_target_not_as_a_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A link to a moved photo used to be reported as one that loops or points into another class."""
    root = _two_class_folder(tmp_path / "f")
    (root / "cat" / "moved.png").symlink_to(tmp_path / "f" / "cat" / "gone.png")
    (root / "cat" / "loop.png").symlink_to("loop.png")
    scan = scan_folder(root)
    assert scan.dangling_links == ("cat/moved.png",) and scan.skipped_links == ("cat/loop.png",)
    with caplog.at_level("WARNING"):
        loaded = load_folder(root, FolderOptions(image_size=4))
    assert len(loaded.image_set) == 6
    assert "skipped 1 symlinks whose target does not exist (a moved or deleted image?): cat/moved.png" in (
        caplog.text
    )
    assert folder_module.list_image_files(root / "cat").dangling_links == ("moved.png",)


def test_class_folders_named_one_name_in_two_unicode_forms_stop_the_load(tmp_path: Path) -> None:
    """'café' composed (Linux) and decomposed (macOS) used to become two classes that print the same."""
    root = _two_class_folder(tmp_path / "f")
    for name in ("caf\u00e9", "cafe\u0301"):
        (root / name).mkdir()
        for index in range(2):
            _solid("RGB", (0, 0, 0), (8, 8)).save(root / name / f"{index}.png")
    expected = r"differ only in their Unicode form: 'cafe\\u0301' and 'caf\\xe9' \(one name written two ways"
    with pytest.raises(DataError, match=expected):
        load_split(DataConfig(name=f"folder:{root}", image_size=4), "train")
    (root / "cafe\u0301").rename(root / "Caf\u00e9")  # another name (case differs): two classes, as given
    assert len(scan_folder(root).class_names) == 4 and not scan_folder(root).problems()


def test_train_and_test_class_folders_that_differ_are_named_distinguishably(tmp_path: Path) -> None:
    """'café' in train/ and test/, written in two Unicode forms, used to print as the same list twice."""
    root = tmp_path / "split"
    for part, name in (("train", "caf\u00e9"), ("test", "cafe\u0301")):
        _two_class_folder(root / part, count=2)
        (root / part / "dog").rename(root / part / name)
    expected = r"only in train/: 'caf\\xe9'; only in test/: 'cafe\\u0301'$"
    with pytest.raises(DataError, match=expected):
        load_split(DataConfig(name=f"folder:{root}", image_size=4), "train")
