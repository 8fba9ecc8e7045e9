import errno
import gc
import io
import os
import pickle
import signal

import pytest
import torch

from cnnlab import safeio
from cnnlab.errors import Interrupted, WeightsError
from cnnlab.interrupts import signals_raise


def test_atomic_write_leaves_no_temp_files(tmp_path):
    safeio.atomic_write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert safeio.read_json(tmp_path / "a" / "r.json") == {"x": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]


def test_failed_atomic_write_keeps_old_content(tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), safeio.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.txt"]


class FullDisk(io.RawIOBase):
    """A file on a disk that fills after `room` bytes: the write that does not fit fails with ENOSPC. (torch
    then raises a RuntimeError, 'unexpected pos', from the OSError, as it does on a real full disk.)"""

    def __init__(self, room: int = 1000) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)


def test_atomic_torch_save_on_a_full_disk_raises_the_os_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    # torch.save reports a failed write as a RuntimeError ('unexpected pos ...'); a caller must see the
    # OSError to tell a full disk (resume later) from a crash (record the run as failed)
    path = tmp_path / "last.ckpt"
    safeio.atomic_torch_save({"w": torch.zeros(3)}, path)
    before = path.read_bytes()
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *args, **kw: real_save(obj, FullDisk(), *args, **kw))
    with pytest.raises(OSError) as raised:
        safeio.atomic_torch_save({"w": torch.ones(1000)}, path)
    assert raised.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_signal_during_atomic_torch_save_arrives_as_itself(tmp_path, monkeypatch):
    # the signal handler raises Interrupted inside the file's write, which torch turns into a RuntimeError: a
    # run stopped by SIGTERM while saving a checkpoint was recorded as failed (exit 1), not interrupted (143)
    class SignalArrives(FullDisk):
        def write(self, data) -> int:
            if len(data) > self.room:  # a few records in
                raise Interrupted(signal.SIGTERM)
            return super().write(data)

    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **kw: real_save(obj, SignalArrives(), *a, **kw))
    with pytest.raises(Interrupted):
        safeio.atomic_torch_save({"w": torch.ones(1000)}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []


class _SignalWhilePickled:
    """Sends SIGTERM to this process while torch.save pickles it: the handler runs inside torch.save."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))  # the handler runs here
        return (int, (0,))


class _Pickled:
    seen = 0

    def __reduce__(self):
        _Pickled.seen += 1
        return (int, (0,))


def test_a_real_signal_inside_torch_save_is_raised_once_the_file_is_whole(tmp_path):
    """Held until torch.save has finished its zip file (an interrupted writer finished it at exit, into a
    closed file: the process aborted), then raised; nothing is installed at the path."""
    path = tmp_path / "last.ckpt"
    checkpoint = {"w": torch.ones(1000), "signal": _SignalWhilePickled(), "after": _Pickled()}
    with signals_raise(), pytest.raises(Interrupted) as stopped:
        safeio.atomic_torch_save(checkpoint, path)
    assert stopped.value.signum == signal.SIGTERM and _Pickled.seen == 1  # pickled to the end first
    assert list(tmp_path.iterdir()) == []
    gc.collect()  # no writer left unfinished to write into a closed file


def test_state_dict_round_trip(tmp_path):
    state = {"w": torch.arange(4.0)}
    safeio.atomic_torch_save(state, tmp_path / "w.pt")
    assert torch.equal(safeio.load_checkpoint(tmp_path / "w.pt")["w"], state["w"])


class _Evil:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['CNNLAB_MARKER'], 'w').write('pwned')",))


def test_code_running_pickle_is_refused_and_does_not_run(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("CNNLAB_MARKER", str(marker))
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _Evil()}))
    with pytest.raises(WeightsError, match="refused to load"):
        safeio.load_checkpoint(evil)
    assert not marker.exists()


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(WeightsError, match="checkpoint not found"):
        safeio.load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(WeightsError, match="checkpoint is a folder, not a weights file"):
        safeio.load_checkpoint(tmp_path)
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    with pytest.raises(WeightsError, match="checkpoint is a device, pipe or socket, not a weights file"):
        safeio.load_checkpoint(fifo)


def test_text_with_surrogates_is_written_and_printed_with_the_bytes_escaped(tmp_path):
    """os.listdir gives a file name's undecodable byte 0xff as "\\udcff"; a JSON string can hold a lone
    "\\ud800". Both are written as text a user reads (`\\xff`, as `ls -b` shows it), never a crash."""
    from cnnlab.errors import printable

    text = "\udcffcat dog\ud800 é"
    assert safeio.text_bytes(text) == b"\\xffcat dog\\ud800 \xc3\xa9"
    assert printable(text + "\n") == "\\xffcat dog\\ud800 é\\n"
    safeio.atomic_write_text(tmp_path / "ids.csv", text)
    assert (tmp_path / "ids.csv").read_bytes() == safeio.text_bytes(text)
