"""evaluate, predict and export against a careless or hostile user: nothing they point --out at is lost,
damaged checkpoints and edited metadata are one line and exit 2, ids are unique, output is strict JSON."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlab import cli, runfolder, safeio
from cnnlab.config import from_dict
from cnnlab.errors import WeightsError
from cnnlab.train import fit
from tests.test_data_support import isolate
from tests.test_errors import user_error


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def best_checkpoint(run: Path) -> Path:
    return runfolder.checkpoint_path(run, runfolder.BEST_CHECKPOINT)


def write_images(folder: Path, names: list[str]) -> Path:
    for index, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * index % 255, 90, 160)).save(folder / name)
    return folder


def read_ids(csv_file: Path) -> list[str]:
    return [line.split(",")[0] for line in csv_file.read_text().splitlines()[1:]]


# --- 1. predict --out never destroys what it did not write ---------------------------------------------


def test_predict_refuses_to_overwrite_the_checkpoint(run_copy, tmp_path, capsys):
    images = write_images(tmp_path / "images", ["0.png", "1.png"])
    best = best_checkpoint(run_copy)
    before = best.read_bytes()
    args = ["predict", "--checkpoint", str(best), "--images", str(images), "--out", str(best)]
    user_error(capsys, args, contains="--checkpoint itself")
    assert best.read_bytes() == before
    assert cli.main(["evaluate", "--checkpoint", str(run_copy)]) == 0


def test_predict_refuses_any_file_in_a_runs_checkpoints_folder(run_copy, tmp_path, capsys):
    images = write_images(tmp_path / "images", ["0.png"])
    last = runfolder.checkpoint_path(run_copy, runfolder.LAST_CHECKPOINT)
    before = last.read_bytes()
    for out in (last, last.parent / "preds.csv"):
        args = ["predict", "--checkpoint", str(run_copy), "--images", str(images), "--out", str(out)]
        user_error(capsys, args, contains="checkpoints/")
    assert last.read_bytes() == before and not (last.parent / "preds.csv").exists()


def test_predict_replaces_its_own_csv_but_no_other_file(trained, tmp_path, capsys):
    images = write_images(tmp_path / "images", ["0.png", "1.png"])
    preds = tmp_path / "preds.csv"
    for fmt in ("kaggle", "probs", "kaggle"):  # re-running predict over its own output is normal
        args = ["predict", "--checkpoint", str(trained), "--images", str(images), "--out", str(preds)]
        assert cli.main([*args, "--format", fmt]) == 0
    mine = tmp_path / "notes.csv"
    mine.write_text("id,name,age\n1,ann,31\n")
    args = ["predict", "--checkpoint", str(trained), "--images", str(images), "--out", str(mine)]
    user_error(capsys, args, contains="not a predictions CSV")
    assert mine.read_text() == "id,name,age\n1,ann,31\n"


def test_predict_loads_the_model_once(trained, tmp_path, monkeypatch):
    from cnnlab.train import inference

    images = write_images(tmp_path / "images", ["0.png"])
    loads = []
    real = inference.load_model
    monkeypatch.setattr(inference, "load_model", lambda path: loads.append(path) or real(path))
    args = ["predict", "--checkpoint", str(trained), "--images", str(images)]
    assert cli.main([*args, "--out", str(tmp_path / "p.csv")]) == 0
    assert len(loads) == 1


# --- 2. export --out: new, empty or a previous export; a run folder serves its own checkpoint -----------


def test_export_refuses_a_folder_of_user_files(trained, tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"mine":1}')
    user_error(
        capsys, ["export", "--checkpoint", str(trained), "--out", str(folder)], contains="not a cnnlab"
    )
    assert (folder / "manifest.json").read_text() == '{"mine":1}'
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]


def test_export_into_a_folder_left_by_a_killed_export_is_not_refused(trained, tmp_path, capsys):
    # an export SIGKILLed while writing its first files left their temporary files; the rerun was refused as
    # "files that are not a cnnlab export"
    out = tmp_path / "export"
    out.mkdir()
    for name in ("model.safetensors", "manifest.json"):
        safeio._new_temp_file(out / name).write_bytes(b"half written")
    assert cli.main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 0
    assert cli.main(["evaluate", "--checkpoint", str(out)]) == 0
    other = tmp_path / "other"
    other.mkdir()
    safeio._new_temp_file(other / "model.safetensors").write_bytes(b"half written")
    (other / "notes.txt").write_text("mine")  # a file of the user's still makes it no export's folder
    user_error(capsys, ["export", "--checkpoint", str(trained), "--out", str(other)], contains="not a cnnlab")


def test_export_replaces_a_previous_export(trained, tmp_path):
    out = tmp_path / "export"
    assert cli.main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 0
    assert cli.main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 0
    assert cli.main(["evaluate", "--checkpoint", str(out)]) == 0


def test_export_into_a_run_folder_is_refused_and_a_run_folder_serves_its_own_checkpoint(
    run_copy, trained, tmp_path, capsys
):
    user_error(
        capsys, ["export", "--checkpoint", str(trained), "--out", str(run_copy)], contains="run folder"
    )
    stale = tmp_path / "stale"  # what an older cnnlab let export write into a run folder
    assert cli.main(["export", "--checkpoint", str(trained), "--out", str(stale)]) == 0
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["classes"] = [f"stale{i}" for i in range(10)]
    (stale / "manifest.json").write_text(json.dumps(manifest))
    for name in ("manifest.json", "model.safetensors"):
        shutil.copy(stale / name, run_copy / name)
    from cnnlab.train import load_model

    assert load_model(run_copy).class_names == [str(i) for i in range(10)]


# --- 3. damaged checkpoints are told apart -------------------------------------------------------------


def test_a_corrupted_checkpoint_is_refused(run_copy, capsys):
    best = best_checkpoint(run_copy)
    data = bytearray(best.read_bytes())
    data[50000:50400] = bytes(b ^ 0xFF for b in data[50000:50400])
    corrupt = run_copy / "corrupt.ckpt"
    corrupt.write_bytes(bytes(data))
    line = user_error(capsys, ["evaluate", "--checkpoint", str(corrupt)], contains="corrupt")
    assert "weights-only" not in line


@pytest.mark.parametrize(
    "content",
    [bytes(range(256)) * 16, b"\x80\x9b" + bytes(range(256)) * 16, b"id,label\n1,0\n"],
    ids=["binary", "pickle-opcode-then-junk", "csv"],
)
def test_a_file_that_is_no_checkpoint_is_named_so(tmp_path, capsys, content):
    path = tmp_path / "x.ckpt"
    path.write_bytes(content)
    line = user_error(capsys, ["evaluate", "--checkpoint", str(path)], contains="not a PyTorch checkpoint")
    assert "weights-only" not in line


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['CNNLAB_MARKER'], 'w').write('ran')",))


def test_the_four_kinds_of_unloadable_files_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_MARKER", str(tmp_path / "marker"))
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(1000.0)}, good)
    files = {
        "not a PyTorch checkpoint": b"\x00\x01garbage",
        "truncated": good.read_bytes()[:500],
        "corrupt": good.read_bytes().replace(torch.arange(1000.0).numpy().tobytes()[:64], bytes(64)),
        "refused to load": pickle.dumps({"state_dict": _RunsCode()}, protocol=2),
    }
    for expected, content in files.items():
        path = tmp_path / "x.pt"
        path.write_bytes(content)
        with pytest.raises(WeightsError, match=expected):
            safeio.load_checkpoint(path)
    assert not (tmp_path / "marker").exists()


# --- 4. checkpoint metadata: types and ranges ----------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "contains"),
    [
        ("mean", ["x"], "mean"),
        ("std", [0.0], "std"),
        ("std", [float("nan")], "std"),
        ("image_size", -5, "image_size"),
        ("class_names", list(range(10)), "class_names"),
        ("model_hparams.widths", [100000, 100000], "widths"),
    ],
)
def test_edited_metadata_is_one_line(run_copy, capsys, key, value, contains):
    best = best_checkpoint(run_copy)
    checkpoint = torch.load(best, weights_only=True)
    node = checkpoint["cnnlab"]
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    torch.save(checkpoint, best)
    user_error(capsys, ["evaluate", "--checkpoint", str(best)], contains=contains)


def test_a_model_that_cannot_be_allocated_is_one_line_naming_its_hparams(trained, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10^12 bytes")

    monkeypatch.setattr("cnnlab.train.checkpoint.create_model", out_of_memory)
    line = user_error(capsys, ["evaluate", "--checkpoint", str(trained)], contains="model_hparams")
    assert "num_classes" in line and "allocate" in line


# --- 5. evaluate prints strict JSON ------------------------------------------------------------------------


def test_evaluate_of_nan_weights_prints_strict_json(run_copy, capsys):
    best = best_checkpoint(run_copy)
    checkpoint = torch.load(best, weights_only=True)
    for tensor in checkpoint["state_dict"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    torch.save(checkpoint, best)
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(best)]) == 0

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    metrics = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert metrics["loss"] is None


# --- 6. and 9. predict ids are unique; a folder of class subfolders is read -------------------------------


def test_predict_ids_are_stems_when_unique_else_relative_paths(trained, tmp_path):
    kaggle = write_images(tmp_path / "test1", ["1.jpg", "2.jpg", "10.jpg"])
    clash = write_images(tmp_path / "clash", ["1.jpg", "1.png", "2.png"])
    for folder, expected in ((kaggle, ["1", "2", "10"]), (clash, ["1.jpg", "1.png", "2.png"])):
        out = tmp_path / f"{folder.name}.csv"
        args = ["predict", "--checkpoint", str(trained), "--images", str(folder), "--out", str(out)]
        assert cli.main(args) == 0
        assert read_ids(out) == expected


def test_predict_reads_a_folder_of_class_subfolders(trained, tmp_path):
    photos = write_images(tmp_path / "photos", ["cat/0.png", "cat/1.png", "dog/0.png", "dog/.hidden.png"])
    out = tmp_path / "preds.csv"
    args = ["predict", "--checkpoint", str(trained), "--images", str(photos), "--out", str(out)]
    assert cli.main([*args, "--format", "kaggle"]) == 0
    assert read_ids(out) == ["cat/0.png", "cat/1.png", "dog/0.png"]


def test_predict_ids_of_a_folder_datasets_test_split_are_unique(tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    names = [
        f"{split}/{cls}/{i}.png" for split in ("train", "test") for cls in ("cat", "dog") for i in range(10)
    ]
    root = write_images(tmp_path / "tt", names)
    run = tmp_path / "run"
    config = {"model.name": "lenet5", "data.name": f"folder:{root}", "data.image_size": 16, "train.epochs": 1}
    fit(from_dict(config), run)
    out = tmp_path / "preds.csv"
    args = ["predict", "--checkpoint", str(run), "--images", f"folder:{root}", "--out", str(out)]
    assert cli.main(args) == 0
    assert read_ids(out) == [f"{cls}/{i}.png" for cls in ("cat", "dog") for i in range(10)]


# --- 7. and 8. file modes and messages ---------------------------------------------------------------------


def test_exported_files_have_the_normal_mode(trained, tmp_path):
    umask = os.umask(0o022)
    try:
        assert cli.main(["export", "--checkpoint", str(trained), "--out", str(tmp_path / "e")]) == 0
    finally:
        os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "e").iterdir()}
    assert modes == {"manifest.json": 0o644, "model.safetensors": 0o644}


def test_out_paths_through_a_file_say_what_to_do(trained, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    line = user_error(
        capsys, ["export", "--checkpoint", str(trained), "--out", str(afile)], contains="a file"
    )
    assert "give a folder" in line
    images = write_images(tmp_path / "images", ["0.png"])
    args = ["predict", "--checkpoint", str(trained), "--images", str(images), "--out", str(afile / "x.csv")]
    line = user_error(capsys, args, contains="is a file, not a folder")
    assert "give a path" in line and afile.read_text() == "mine"


# --- 10. a mistyped --data-dir is an error, not a silent fallback -----------------------------------------


def test_evaluate_and_predict_with_a_mistyped_data_dir_exit_2_naming_it(trained, tmp_path, capsys):
    missing = str(tmp_path / "dtaa")
    for args in (
        ["evaluate", "--checkpoint", str(trained)],
        ["predict", "--checkpoint", str(trained), "--images", "digits", "--out", str(tmp_path / "p.csv")],
    ):
        line = user_error(
            capsys, [*args, "--data-dir", missing], contains=f"data.data_dir (--data-dir) '{missing}'"
        )
        assert "does not exist" in line
    assert not (tmp_path / "p.csv").exists()


# --- 11. predict and explain list image files like a training folder's class --------------------------------


def test_predict_lists_files_like_a_training_class_folder(tmp_path, caplog):
    from cnnlab.train.inference import read_image_files

    images = write_images(tmp_path / "images", ["a.png", "more/b.png", "__MACOSX/c.png", ".hide/d.png"])
    (images / "linked").symlink_to(images / "more", target_is_directory=True)  # followed, as in training
    (images / "loop").symlink_to(images, target_is_directory=True)  # a loop: never followed
    (images / "gone.png").symlink_to(tmp_path / "nowhere.png")  # dangling: skipped
    os.mkfifo(images / "pipe.png")  # a FIFO would block a reader: never opened
    with caplog.at_level("WARNING"):
        files, pixels = read_image_files(images, size=8, channels=3)
    assert [file.as_posix() for file in files] == ["a.png", "linked/b.png", "more/b.png"]
    assert pixels.shape == (3, 3, 8, 8)
    for reported in ("__MACOSX", ".hide", "loop", "gone.png", "pipe.png"):
        assert reported in caplog.text


def test_predict_refuses_links_leaving_the_images_folder(trained, tmp_path, capsys):
    elsewhere = write_images(tmp_path / "elsewhere", ["x.png"])
    images = write_images(tmp_path / "images", ["a.png"])
    (images / "x.png").symlink_to(elsewhere / "x.png")
    out = tmp_path / "p.csv"
    args = ["predict", "--checkpoint", str(trained), "--images", str(images), "--out", str(out)]
    line = user_error(capsys, args, contains="symlinks leaving the folder: x.png")
    assert "copy those images" in line and not out.exists()


def test_an_unreadable_subfolder_stops_predict_instead_of_being_skipped(
    trained, tmp_path, capsys, monkeypatch
):
    images = write_images(tmp_path / "images", ["a.png", "locked/b.png"])
    real_scandir = os.scandir

    def scandir(path):  # what a folder without read permission does (tests may run as root)
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "p.csv"
    args = ["predict", "--checkpoint", str(trained), "--images", str(images), "--out", str(out)]
    line = user_error(capsys, args, contains="cannot scan folder")
    assert "Permission denied" in line and "locked" in line and not out.exists()


def test_predict_of_an_image_over_pillows_bomb_limit_names_the_file(tmp_path, monkeypatch):
    from cnnlab.errors import DataError
    from cnnlab.train.inference import read_image_files

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 8x8 images pass, 12x10 trips the warning level
    images = write_images(tmp_path / "images", ["a.png"])
    Image.new("RGB", (12, 10)).save(images / "bomb.png")
    with pytest.raises(
        DataError, match=r"^1 unreadable image\(s\) in .*: bomb.png \(header claims 120 pixels"
    ):
        read_image_files(images, size=8, channels=3)


# --- 12. hostile --images arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("images", ["", "   ", "file"])
def test_predict_and_explain_refuse_an_empty_or_file_images_argument(
    trained, tmp_path, capsys, monkeypatch, images
):
    monkeypatch.chdir(write_images(tmp_path / "cwd", ["a.png"]))  # "" must not mean the working directory
    if images == "file":
        images = str(Path("a.png").absolute())
    expected = "is a file; give the folder" if images.strip() else "--images is empty"
    for command in ("predict", "explain"):
        out = tmp_path / f"{command}-out"
        args = [command, "--checkpoint", str(trained), "--images", images, "--out", str(out)]
        user_error(capsys, args, contains=expected)
        assert not out.exists()


@pytest.mark.parametrize("images", ["/tmp/no-such-photos", "./photos", "~/no-such-photos", "sub/dir"])
def test_predict_of_a_missing_folder_says_no_such_folder(trained, tmp_path, capsys, images):
    out = tmp_path / "p.csv"
    args = ["predict", "--checkpoint", str(trained), "--images", images, "--out", str(out)]
    user_error(capsys, args, contains=": no such folder; give a folder of image files")
    assert not out.exists()


def test_predict_composites_transparency_over_the_runs_background(tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    root = write_images(tmp_path / "f", [f"{cls}/{i}.png" for cls in ("a", "b") for i in range(10)])
    config = {"model.name": "lenet5", "data.name": f"folder:{root}", "data.image_size": 16, "train.epochs": 1}
    run = tmp_path / "run"
    fit(from_dict({**config, "data.background": [0, 0, 0]}), run)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGBA", (16, 16), (255, 255, 255, 0)).save(images / "clear.png")  # shows the background
    Image.new("RGB", (16, 16), (0, 0, 0)).save(images / "black.png")
    Image.new("RGB", (16, 16), (255, 255, 255)).save(images / "white.png")
    out = tmp_path / "p.csv"
    args = ["predict", "--checkpoint", str(run), "--images", str(images), "--out", str(out)]
    assert cli.main([*args, "--format", "probs"]) == 0
    rows = {line.split(",")[0]: line.split(",")[1:] for line in out.read_text().splitlines()[1:]}
    assert rows["clear"] == rows["black"] and rows["black"] != rows["white"]


def test_predict_prints_class_names_with_control_characters_on_one_line(tmp_path, monkeypatch, capsys):
    isolate(monkeypatch, tmp_path)
    names = ["new\nline", "bell\x1b[31m"]
    root = write_images(tmp_path / "f", [f"{cls}/{i}.png" for cls in names for i in range(10)])
    run = tmp_path / "run"
    fit(from_dict({"model.name": "lenet5", "data.name": f"folder:{root}", "train.epochs": 1}), run)
    images = write_images(tmp_path / "images", ["one.png"])
    capsys.readouterr()
    argv = ["predict", "--checkpoint", str(run), "--images", str(images), "--out", str(tmp_path / "p.csv")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "labels: 0 = bell\\x1b[31m, 1 = new\\nline" and "\x1b" not in out
