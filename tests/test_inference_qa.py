"""explain and evaluate used carelessly: explain never writes into the folder it reads nor replaces a file it
did not write; evaluate --split val never applies a run's validation indices to other data."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from PIL import Image

from cnnlab import cli
from cnnlab.config import from_dict
from cnnlab.train import fit, gradcam, inference
from tests.conftest import TINY_RUN
from tests.test_errors import user_error


def write_images(folder: Path, names: list[str]) -> Path:
    for index, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * index % 255, 90, 160)).save(folder / name)
    return folder


def explain(trained: Path, images: Path | str, out: Path | str) -> list[str]:
    return ["explain", "--checkpoint", str(trained), "--images", str(images), "--out", str(out)]


def test_explain_refuses_an_out_inside_the_images_folder(trained, tmp_path, capsys):
    images = write_images(tmp_path / "photos", ["0.png", "1.png"])
    user_error(capsys, explain(trained, images, images / "cams"), contains="inside the --images folder")
    assert not (images / "cams").exists()  # before: written there, and read back as images by the next run


def test_explain_never_replaces_a_file_it_did_not_write(trained, tmp_path, capsys):
    images = write_images(tmp_path / "photos", ["0.png", "1.png", "sub/0.png"])
    mine = write_images(tmp_path / "mine", ["0.png", "notes.png"])
    before = {path.name: path.read_bytes() for path in mine.iterdir()}
    user_error(capsys, explain(trained, images, mine), contains="0.png")
    assert {path.name: path.read_bytes() for path in mine.iterdir()} == before  # nothing replaced or added
    # --out above --images: overlay 0.png of sub/0.png would replace the input photos/0.png
    user_error(capsys, explain(trained, images / "sub", images), contains="(0.png)")
    # a folder of its own overlays is replaced, run after run
    out = tmp_path / "cams"
    assert cli.main(explain(trained, images, out)) == 0
    assert cli.main(explain(trained, images, out)) == 0
    assert sorted(path.name for path in out.iterdir()) == ["0.png", "1.png", "sub_0.png"]


def test_explain_with_an_empty_out_writes_nothing_in_the_working_directory(
    trained, tmp_path, capsys, monkeypatch
):
    images = write_images(tmp_path / "photos", ["0.png"])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    user_error(capsys, explain(trained, images, ""), contains="--out is empty")
    assert list(work.iterdir()) == []


def test_evaluate_val_of_other_training_images_is_refused(trained, capsys):
    # --data digits drops the run's data.subset: its 100-image splits.json does not describe those 1437
    user_error(
        capsys,
        ["evaluate", "--checkpoint", str(trained), "--data", "digits", "--split", "val"],
        contains="--split val",
    )
    assert cli.main(["evaluate", "--checkpoint", str(trained), "--split", "val"]) == 0  # its own data: fine


def test_predict_never_replaces_a_device_or_pipe(trained, tmp_path, capsys):
    images = write_images(tmp_path / "photos", ["0.png"])
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # stands in for /dev/null or /dev/stdout, which a run as root would replace by a file
    argv = ["predict", "--checkpoint", str(trained), "--images", str(images), "--out", str(fifo)]
    user_error(capsys, argv, contains="not a regular file")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_explain_refuses_a_pipe_with_an_overlays_name_without_waiting_on_it(trained, tmp_path, capsys):
    images = write_images(tmp_path / "photos", ["0.png"])
    out = tmp_path / "cams"
    out.mkdir()
    os.mkfifo(out / "0.png")  # opening it to look inside would block until something writes to it
    user_error(capsys, explain(trained, images, out), contains="(0.png)")
    assert stat.S_ISFIFO((out / "0.png").lstat().st_mode)


def test_explain_refuses_a_damaged_file_with_an_overlays_name_whatever_pillow_raises(
    trained, tmp_path, monkeypatch, capsys
):
    images = write_images(tmp_path / "photos", ["0.png"])
    out = tmp_path / "cams"
    out.mkdir()
    (out / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    real_open = gradcam.Image.open

    def raising_like_a_crafted_tiff_tag(path, *args, **kwargs):
        if Path(path).parent == out:
            raise TypeError("a tag value of the wrong type")  # what Pillow raises for some crafted files
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(gradcam.Image, "open", raising_like_a_crafted_tiff_tag)
    user_error(capsys, explain(trained, images, out), contains="(0.png)")
    assert (out / "0.png").read_bytes() == b"\x89PNG\r\n\x1a\n damaged"


def test_an_export_stopped_on_the_way_leaves_the_previous_export_whole(
    trained, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "export"
    assert cli.main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the ONNX trace runs, after the weights were made

    monkeypatch.setattr(inference, "_export_onnx", stopped)
    other = tmp_path / "other"
    fit(from_dict({**TINY_RUN, "train.seed": 1}), other)  # other weights: a new export would change the files
    assert cli.main(["export", "--checkpoint", str(other), "--out", str(out), "--onnx"]) == 130
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no temp file left either
    monkeypatch.undo()
    images = write_images(tmp_path / "photos", ["0.png"])
    argv = ["predict", "--checkpoint", str(out), "--images", str(images), "--out", str(tmp_path / "p.csv")]
    assert cli.main(argv) == 0


def test_predict_explain_and_export_start_without_lightning(trained, tmp_path):
    """The commands that only use a trained model import neither Lightning nor torchmetrics (4 s of a 2-core
    start-up): the trainer's checkpoint plugin lives with the callbacks, not with the checkpoint reader."""
    images = write_images(tmp_path / "photos", ["0.png"])
    commands = [
        ["predict", "--checkpoint", str(trained), "--images", str(images), "--out", str(tmp_path / "p.csv")],
        explain(trained, images, tmp_path / "cams"),
        ["export", "--checkpoint", str(trained), "--out", str(tmp_path / "export")],
    ]
    code = (
        "import sys\nfrom cnnlab.cli import main\n"
        f"assert all(main(command) == 0 for command in {commands!r})\n"
        "print('loaded:', sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'torchmetrics'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "loaded: []"
    assert (tmp_path / "p.csv").is_file() and (tmp_path / "export" / "model.safetensors").is_file()
    assert len(list((tmp_path / "cams").glob("*.png"))) == 1
