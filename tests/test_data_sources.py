"""Named datasets: real-format readers (IDX raw/gz, CIFAR pickles), lookup order, offline errors, the CLI."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab import cli
from cnnlab.config import DataConfig
from cnnlab.data import catalog, get_spec, load_split, locate, locations, readers
from cnnlab.data.readers import read_cifar_pickle, read_idx_images, read_idx_labels
from cnnlab.errors import ConfigError, DataError
from tests.test_data_support import isolate, write_cifar10, write_cifar100, write_idx, write_mnist_like


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate(monkeypatch, tmp_path)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader_returns_the_written_images_and_labels(tmp_path: Path, compress: bool) -> None:
    images = np.random.default_rng(1).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.uint8)
    image_file = write_idx(tmp_path / "imgs-idx3-ubyte", images, compress=compress)
    label_file = write_idx(tmp_path / "labels-idx1-ubyte", labels, compress=compress)
    read_images, read_labels = read_idx_images(image_file), read_idx_labels(label_file)
    assert read_images.shape == (7, 1, 28, 28) and read_images.dtype == torch.uint8
    assert torch.equal(read_images[:, 0], torch.from_numpy(images))
    assert read_labels.dtype == torch.int64 and read_labels.tolist() == labels.tolist()


def test_corrupt_idx_file_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "train-images-idx3-ubyte.gz"
    broken.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        read_idx_images(broken)


def test_fashion_mnist_from_data_dir_has_the_files_counts_and_class_names(tmp_path: Path) -> None:
    written = write_mnist_like(tmp_path / "data" / "fashion-mnist", train=60, test=20, compress=True)
    config = DataConfig(name="fashion-mnist", data_dir=str(tmp_path / "data"))
    train, test = load_split(config, "train"), load_split(config, "test")
    assert (len(train), len(test)) == (60, 20)
    assert (
        train.shape == (1, 28, 28) and train.class_names[0] == "T-shirt/top" and len(train.class_names) == 10
    )
    assert torch.equal(test.images[:, 0], torch.from_numpy(written["t10k"][0]))
    assert test.labels.tolist() == written["t10k"][1].tolist()


def test_torchvision_layout_with_raw_files_is_found(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "MNIST" / "raw", train=10, test=10, compress=False)
    found = locate(get_spec("mnist"), str(tmp_path))
    assert (
        found is not None and found.directory == tmp_path / "MNIST" / "raw" and found.origin == "--data-dir"
    )


def test_a_folder_named_for_another_dataset_is_not_found_as_this_one(isolated: Path, tmp_path: Path) -> None:
    """MNIST, Fashion-MNIST and KMNIST share their file names: Fashion-MNIST's folder is not MNIST."""
    write_mnist_like(tmp_path / "fashion-mnist", train=10, test=10, compress=True)
    given = str(tmp_path / "fashion-mnist")
    assert locate(get_spec("fashion-mnist"), given) == catalog.Location(
        tmp_path / "fashion-mnist", "--data-dir"
    )
    assert locate(get_spec("mnist"), given) is None and locate(get_spec("kmnist"), given) is None
    write_mnist_like(tmp_path / "files", train=10, test=10, compress=True)  # a neutral name: taken as given
    assert locate(get_spec("mnist"), str(tmp_path / "files")).directory == tmp_path / "files"


def test_idx_images_of_the_wrong_shape_are_refused(isolated: Path, tmp_path: Path) -> None:
    folder = tmp_path / "fm"
    write_mnist_like(folder, train=10, test=10, compress=False)
    reshaped = np.zeros((10, 14, 56), dtype=np.uint8)  # the same bytes per image, another header
    write_idx(folder / "train-images-idx3-ubyte", reshaped, compress=False)
    with pytest.raises(DataError, match="images are 1x14x56, not 1x28x28"):
        load_split(DataConfig(name="fashion-mnist", data_dir=str(folder)), "train")


def test_lookup_order_is_data_dir_then_env_then_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for place in ("given", "env", "system"):
        write_mnist_like(tmp_path / place / "kmnist", train=10, test=10, compress=True)
    monkeypatch.setenv(locations.DATA_ENV, str(tmp_path / "env"))
    monkeypatch.setattr(locations, "SYSTEM_DATA_DIRS", (str(tmp_path / "system"),))
    spec = get_spec("kmnist")
    assert locate(spec, str(tmp_path / "given")).origin == "--data-dir"
    assert locate(spec, None).origin == f"${locations.DATA_ENV}"
    monkeypatch.delenv(locations.DATA_ENV)
    assert locate(spec, None) == catalog.Location(tmp_path / "system" / "kmnist", "system")


def test_cifar10_batches_are_parsed_with_class_names(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, per_batch=4)
    config = DataConfig(name="cifar10", data_dir=str(tmp_path))
    train, test = load_split(config, "train"), load_split(config, "test")
    assert (len(train), len(test)) == (20, 4) and train.shape == (3, 32, 32)
    assert train.class_names[:3] == ("airplane", "automobile", "bird")
    data, labels = written["data_batch_2"]
    assert torch.equal(train.images[4:8], torch.from_numpy(data.reshape(4, 3, 32, 32)))
    assert train.labels[4:8].tolist() == labels


def test_cifar100_uses_the_fine_labels_and_names(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path / "cifar100", train=9, test=3)
    test = load_split(DataConfig(name="cifar100", data_dir=str(tmp_path)), "test")
    assert len(test) == 3 and len(test.class_names) == 100 and test.class_names[99] == "class99"
    assert test.labels.tolist() == written["test"][1]


def test_loads_are_memoised_per_process(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "mnist", train=10, test=10, compress=True)
    config = DataConfig(name="mnist", data_dir=str(tmp_path))
    first = load_split(config, "train")
    for path in (tmp_path / "mnist").iterdir():
        path.unlink()  # a memoised split does not touch the files again
    assert load_split(config, "train") is first


class _RunsCode:
    def __reduce__(self) -> tuple:
        import os

        return (os.system, ("touch pwned-by-pickle",))


def test_a_cifar_batch_that_would_run_code_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({"data": _RunsCode()}, protocol=2))
    with pytest.raises(DataError, match="refused to read .*(posix|os).system"):
        read_cifar_pickle(evil)
    assert not (tmp_path / "pwned-by-pickle").exists()


def _cifar_batch_with_an_unknown_text_encoding(path: Path) -> None:
    """numpy pickles bytes as _codecs.encode(text, "latin1"): the encoding name replaced (LookupError)."""
    data = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, protocol=2)
    assert b"latin1" in data
    path.write_bytes(data.replace(b"latin1", b"lat1n9"))


def _cifar_batch_claiming_an_exabyte(path: Path) -> None:
    """A BINBYTES8 opcode whose length no machine can allocate (MemoryError or OverflowError)."""
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**60) + b"\x00" * 16)


@pytest.mark.parametrize(
    "craft", [_cifar_batch_with_an_unknown_text_encoding, _cifar_batch_claiming_an_exabyte]
)
def test_a_damaged_cifar_batch_is_a_data_error_whatever_the_unpickler_raises(
    tmp_path: Path, capsys: pytest.CaptureFixture, craft: object
) -> None:
    """LookupError, MemoryError and OverflowError from a damaged batch used to end in a traceback, exit 1."""
    write_cifar10(tmp_path, per_batch=2)
    craft(tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(DataError, match=r"refused to read .*test_batch: "):
        read_cifar_pickle(tmp_path / "cifar-10-batches-py" / "test_batch")
    assert cli.main(["data", "cifar10", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("cnnlab: error: refused to read ")


def test_dataset_missing_offline_names_every_place_searched_and_how_to_get_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as caught:
        load_split(DataConfig(name="fashion-mnist", data_dir=str(tmp_path / "empty")), "train")
    message = str(caught.value)
    assert "\n" not in message
    assert f"{tmp_path / 'empty'} (--data-dir)" in message and "download cache" in message
    assert "CNNLAB_OFFLINE" in message and "apt-get install dataset-fashion-mnist" in message


def test_a_failed_download_is_reported_not_raised_raw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(locations.OFFLINE_ENV)

    def no_network(spec: object, root: Path) -> None:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(catalog, "_download", no_network)
    with pytest.raises(
        DataError, match=r"download failed \(OSError: \[Errno -3\].*to get it: extract cifar-10"
    ):
        load_split(DataConfig(name="cifar10", data_dir=str(tmp_path)), "train")


def test_unknown_dataset_name_is_a_config_error_with_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'fashion_mnist' \(did you mean fashion-mnist"):
        load_split(DataConfig(name="fashion_mnist"), "train")


def test_digits_is_embedded_28px_with_fixed_stratified_test_split() -> None:
    train, test = load_split(DataConfig(), "train"), load_split(DataConfig(), "test")
    assert (len(train), len(test)) == (1437, 360) and train.shape == (1, 28, 28)
    assert int(train.images.max()) == 255 and train.images.dtype == torch.uint8
    assert min(test.class_counts()) >= 35  # stratified: every digit is in the test split


def test_image_size_classes_and_subset_are_applied() -> None:
    config = DataConfig(name="digits", image_size=16, classes=("7", "3"), subset=50)
    train, test = load_split(config, "train"), load_split(config, "test")
    assert train.shape == (1, 16, 16) and train.class_names == ("7", "3")
    assert len(train) == 50 and sorted(train.class_counts()) == [25, 25]
    full_test_counts = load_split(DataConfig(), "test").class_counts()
    assert test.class_counts() == [full_test_counts[7], full_test_counts[3]]  # subset: training split only
    per_class = load_split(DataConfig(name="digits", per_class=5), "train")
    assert per_class.class_counts() == [5] * 10
    with pytest.raises(ConfigError, match="data.classes: unknown class 'eleven'"):
        load_split(DataConfig(name="digits", classes=("eleven",)), "train")


def test_an_image_size_beyond_the_memory_is_one_line_and_only_kept_images_are_resized(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 200 MB available, the 1,437 digits at 512 px (0.6 GB with the float working copy of one resize
    step) are refused before any allocation (at 4096 px they were a 96 GB allocation failure and a
    traceback); a 100-image subset (131 MB) is resized alone, to the same pixels."""
    from cnnlab.data import imageset

    monkeypatch.setattr(imageset, "available_memory", lambda: 200 * 10**6)
    out = tmp_path / "run"
    args = ["train", "--model", "lenet5", "--data", "digits", "--set", "data.image_size=512"]
    args += ["--out", str(out)]
    assert cli.main(args) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("cnnlab: error: data.image_size=512: 1,437 images of 1×512×512 need 0.6 GB of ")
    assert "more than the 0.2 GB available; choose a smaller data.image_size or fewer images" in line
    assert not out.exists()
    subset = load_split(DataConfig(name="digits", image_size=512, subset=100), "train")
    assert subset.shape == (1, 512, 512) and len(subset) == 100
    whole = load_split(DataConfig(name="digits", subset=100), "train")
    assert torch.equal(subset.images, imageset.resize_images(whole.images, 512))  # the same pixels


def test_synthetic_is_deterministic_and_sized() -> None:
    first = load_split(DataConfig(name="synthetic", image_size=12), "train")
    catalog.clear_memory_cache()
    again = load_split(DataConfig(name="synthetic", image_size=12), "train")
    assert first.shape == (3, 12, 12) and len(first) == 2000 and torch.equal(first.images, again.images)
    assert first.class_counts() == [200] * 10


def test_cli_data_lists_datasets_and_describes_one(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "fashion-mnist", train=30, test=10, compress=True)
    assert cli.main(["data", "--data-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert f"{tmp_path / 'fashion-mnist'} (--data-dir)" in table and "bundled with scikit-learn" in table
    assert cli.main(["data", "fashion-mnist", "--data-dir", str(tmp_path)]) == 0
    details = capsys.readouterr().out
    assert "train:   30 images" in details and "test:    10 images" in details and "Ankle boot (3)" in details


def test_cli_data_for_a_missing_dataset_exits_2_with_one_line(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    assert cli.main(["data", "cifar100", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: dataset 'cifar100' not found locally") and err.count("\n") == 1


@pytest.fixture
def system_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fashion-MNIST in the system folder: what a mistyped --data-dir used to fall back to."""
    write_mnist_like(tmp_path / "system" / "fashion-mnist", train=10, test=10, compress=True)
    monkeypatch.setattr(locations, "SYSTEM_DATA_DIRS", (str(tmp_path / "system"),))
    return tmp_path / "system"


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_data_dir_that_is_no_folder_is_an_error_not_a_fallback(
    system_copy: Path, tmp_path: Path, kind: str
) -> None:
    given = tmp_path / "dtaa"
    if kind == "file":
        given.write_text("not a folder")
    expected = "does not exist; create it" if kind == "missing" else "is a file, not a folder"
    for name in ("fashion-mnist", "digits"):
        config = DataConfig(name=name, data_dir=str(given))
        with pytest.raises(DataError, match=rf"^data.data_dir \(--data-dir\) '{given}' {expected}"):
            load_split(config, "train")
        with pytest.raises(DataError, match=expected):
            catalog.check_data_config(config)
    assert locate(get_spec("fashion-mnist"), None).origin == "system"  # without --data-dir: found there


def test_cnnlab_data_with_a_mistyped_data_dir_exits_2_with_one_line(
    system_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for args in (["data"], ["data", "fashion-mnist"]):
        assert cli.main([*args, "--data-dir", str(tmp_path / "dtaa")]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert captured.err.startswith(f"cnnlab: error: data.data_dir (--data-dir) '{tmp_path / 'dtaa'}'")


def test_train_with_a_mistyped_data_dir_stops_before_writing_anything(
    system_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = ["train", "--model", "lenet5", "--data", "fashion-mnist", "--data-dir", str(tmp_path / "dtaa")]
    assert cli.main([*args, "--out", str(out)]) == 2
    assert "data.data_dir (--data-dir)" in capsys.readouterr().err and not out.exists()


def test_a_cnnlab_data_env_that_is_no_folder_is_an_error_naming_the_variable(
    system_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(locations.DATA_ENV, str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"^\$CNNLAB_DATA '.*nope' does not exist; .*or fix or unset"):
        load_split(DataConfig(name="fashion-mnist"), "train")
    assert len(load_split(DataConfig(name="digits"), "train")) == 1437  # needs no files: not searched
    monkeypatch.setenv(locations.DATA_ENV, "")  # empty is unset
    assert locate(get_spec("fashion-mnist"), None).origin == "system"


@pytest.mark.parametrize("compress", [False, True])
def test_an_empty_idx_file_is_called_empty(tmp_path: Path, compress: bool) -> None:
    write_mnist_like(tmp_path / "fm", train=10, test=10, compress=compress)
    labels = tmp_path / "fm" / ("t10k-labels-idx1-ubyte" + (".gz" if compress else ""))
    labels.write_bytes(b"")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte(.gz)?: the file is empty; replace it"):
        load_split(DataConfig(name="fashion-mnist", data_dir=str(tmp_path / "fm")), "test")


@pytest.mark.parametrize("compress", [False, True])
def test_a_truncated_idx_file_is_called_truncated(tmp_path: Path, compress: bool) -> None:
    images = np.zeros((10, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", images, compress=False)
    payload = path.read_bytes()[:-100]
    path.write_bytes(gzip.compress(payload) if compress else payload)
    if compress:
        path = path.rename(path.with_name(path.name + ".gz"))
    with pytest.raises(DataError, match="file is truncated: its header promises 7,856 bytes, it has 7,756"):
        read_idx_images(path)


def test_a_gzip_idx_file_that_inflates_past_its_header_is_refused_without_filling_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 10)  # ten labels promised
    bomb = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(bomb, "wb") as handle:
        handle.write(header + bytes(10))
        for _ in range(64):  # 64 MiB of zeros after them; a few kB on disk
            handle.write(bytes(1 << 20))
    written: list[int] = []
    real_copy = readers._copy_idx

    def counting_copy(source, target, dimensions):
        try:
            real_copy(source, target, dimensions)
        finally:
            written.append(target.tell())

    monkeypatch.setattr(readers, "_copy_idx", counting_copy)
    with pytest.raises(DataError, match="holds more than the 18 bytes its header promises"):
        read_idx_labels(bomb)
    assert written == [19]


@pytest.mark.parametrize("damage", ["removed", "a folder", "a fifo"])
def test_a_data_dir_holding_only_some_files_is_an_error_not_a_fallback(
    system_copy: Path, tmp_path: Path, damage: str
) -> None:
    """A --data-dir with three of the four IDX files used to train on the system copy without a word."""
    given = tmp_path / "mine"
    write_mnist_like(given, train=10, test=10, compress=False)
    lost = given / "t10k-labels-idx1-ubyte"
    lost.unlink()
    if damage == "a folder":
        lost.mkdir()
    elif damage == "a fifo":
        os.mkfifo(lost)
    config = DataConfig(name="fashion-mnist", data_dir=str(given))
    expected = (
        rf"^fashion-mnist: --data-dir folder '{given}' holds only some of its files: missing t10k-labels"
    )
    with pytest.raises(DataError, match=expected):
        load_split(config, "train")
    assert locate(get_spec("fashion-mnist"), None).origin == "system"  # without --data-dir: found there


def test_a_cnnlab_data_env_holding_only_some_files_is_an_error(
    system_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar10(tmp_path / "env", per_batch=2)
    (tmp_path / "env" / "cifar-10-batches-py" / "data_batch_3").unlink()
    monkeypatch.setenv(locations.DATA_ENV, str(tmp_path / "env"))
    with pytest.raises(DataError, match=r"^cifar10: \$CNNLAB_DATA folder .* missing data_batch_3; add them"):
        locate(get_spec("cifar10"), None)


def test_cnnlab_data_lists_an_incomplete_data_dir_instead_of_the_system_copy(
    system_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_mnist_like(tmp_path / "mine" / "fashion-mnist", train=10, test=10, compress=True)
    (tmp_path / "mine" / "fashion-mnist" / "train-images-idx3-ubyte.gz").unlink()
    assert cli.main(["data", "--data-dir", str(tmp_path / "mine")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fashion-mnist"))
    assert "holds only some of its files: missing train-images-idx3-ubyte" in row and "system" not in row


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_and_labels_files_swapped_are_called_so(tmp_path: Path, compress: bool) -> None:
    """A labels file with an images header used to be 'truncated: its header promises 152,229,... bytes'."""
    images = write_idx(tmp_path / "i", np.zeros((4, 28, 28), np.uint8), compress=compress)
    labels = write_idx(tmp_path / "l", np.zeros(4, np.uint8), compress=compress)
    with pytest.raises(DataError, match=r"header has 1 dimension\(s\), but an IDX images file has 3 \(the"):
        read_idx_images(labels)
    with pytest.raises(DataError, match=r"header has 3 dimension\(s\), but an IDX labels file has 1 "):
        read_idx_labels(images)
    with_images_magic = labels.read_bytes() if not compress else gzip.decompress(labels.read_bytes())
    damaged = b"\x00\x00\x08\x03" + with_images_magic[4:]
    labels.write_bytes(gzip.compress(damaged) if compress else damaged)
    with pytest.raises(DataError, match=r"header has 3 dimension\(s\), but an IDX labels file has 1 "):
        read_idx_labels(labels)


def test_idx_labels_of_another_value_type_are_called_so(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">HBBI", 0, 0x0C, 1, 3) + np.full(3, 7, ">i4").tobytes())  # int32 labels
    with pytest.raises(DataError, match=r"value type 0x0C, not unsigned bytes \(0x08\); replace it"):
        read_idx_labels(path)
