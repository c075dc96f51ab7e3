"""A training checkpoint is a durable atomic folder: a kill at any moment leaves one whole checkpoint."""

import torch

from expertcache.toy.checkpoint import TrainState, commit, latest

DEAD = 2**22 + 12345  # above Linux's largest process id: never a running writer


class _Model:
    def __init__(self, value: str):
        self.value = value

    def save_pretrained(self, folder):
        (folder / "model.txt").write_text(self.value)


def test_a_commit_killed_mid_swap_or_mid_write_is_undone_by_the_next_look(tmp_path):
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    assert latest(tmp_path) is None
    commit(tmp_path, _Model("first"), optimizer, TrainState(step=1))
    commit(tmp_path, _Model("second"), optimizer, TrainState(step=2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
    (tmp_path / "checkpoint").rename(tmp_path / f".checkpoint.old-{DEAD}")  # killed between the two renames
    (tmp_path / f".checkpoint.tmp-{DEAD}").mkdir()  # and a third commit killed while writing
    folder, saved = latest(tmp_path)
    assert saved["step"] == 2 and (folder / "model.txt").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_a_damaged_checkpoint_is_a_one_line_error_not_a_traceback(tmp_path):
    import pytest

    from expertcache.errors import ExpertcacheError
    from expertcache.toy import preset, train

    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.pt").write_bytes(b"\xbb" * 300)  # was an UnpicklingError
    with pytest.raises(ExpertcacheError, match="state.pt is damaged .*remove .*checkpoint to train from the start"):
        latest(tmp_path)
    torch.save([1, 2], tmp_path / "checkpoint" / "state.pt")
    with pytest.raises(ExpertcacheError, match="holds no training step"):
        latest(tmp_path)
    out = tmp_path / "run"
    train(preset("smoke"), out, steps=1)
    (out / "checkpoint" / "model.safetensors").write_bytes(b"\x00" * 4000)  # was a SafetensorError
    with pytest.raises(ExpertcacheError, match="checkpoint cannot be resumed .*remove it to train from the start"):
        train(preset("smoke"), out, steps=2)
