"""Atomic, checksummed checkpoints and the fall-back past damaged ones."""

import pytest
import torch

from mamlkit import MamlkitError
from mamlkit.engine.checkpoint import load_latest_checkpoint, read_checkpoint, save_checkpoint


def test_round_trip_and_pruning(tmp_path):
    for iteration in (10, 20, 30):
        save_checkpoint(tmp_path, iteration, {"iteration": iteration, "w": torch.arange(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000020.pt", "ckpt-000000030.pt"]
    state, path = load_latest_checkpoint(tmp_path)
    assert state["iteration"] == 30 and torch.equal(state["w"], torch.arange(3))


@pytest.mark.parametrize("damage", [
    lambda data: data[: len(data) // 2],                                  # truncated by a crash
    lambda data: data[:-10] + bytes(b ^ 0xFF for b in data[-10:]),        # flipped bits
    lambda data: b"",                                                      # empty file
])
def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, damage):
    save_checkpoint(tmp_path, 1, {"iteration": 1})
    newest = save_checkpoint(tmp_path, 2, {"iteration": 2})
    newest.write_bytes(damage(newest.read_bytes()))
    with pytest.raises(MamlkitError, match="truncated or corrupt"):
        read_checkpoint(newest)
    with pytest.warns(UserWarning, match="trying the previous one"):
        state, path = load_latest_checkpoint(tmp_path)
    assert state["iteration"] == 1


def test_no_usable_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(MamlkitError, match="no checkpoint in .*start a new run without --resume"):
        load_latest_checkpoint(tmp_path)
    save_checkpoint(tmp_path, 1, {"iteration": 1}).write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(MamlkitError, match="every checkpoint .* is corrupt"):
        load_latest_checkpoint(tmp_path)
