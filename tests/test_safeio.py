import pickle

import pytest
import torch

from cnnlab import safeio
from cnnlab.errors import WeightsError


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
