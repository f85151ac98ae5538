"""Atomic, checksummed checkpoints and the fall-back past damaged ones."""

import hashlib
import io

import pytest
import torch

from mamlkit import MamlkitError
from mamlkit.engine.checkpoint import (export_weights, load_latest_checkpoint, read_checkpoint, save_checkpoint,
                                       state_digest)


def test_round_trip_and_pruning(tmp_path):
    for iteration in (10, 20, 30):
        save_checkpoint(tmp_path, iteration, {"iteration": iteration, "w": torch.arange(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000020.pt", "ckpt-000000030.pt"]
    state, path = load_latest_checkpoint(tmp_path)
    assert state["iteration"] == 30 and torch.equal(state["w"], torch.arange(3))


WEIGHT = torch.arange(6.0)


def flip_weight_byte(data: bytes) -> bytes:
    """One bit of the stored tensor flipped: the file still unpickles, only the checksum sees it."""
    at = data.index(WEIGHT.numpy().tobytes()) + 5
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


@pytest.mark.parametrize("damage", [
    lambda data: data[: len(data) // 2],                                  # truncated by a crash
    flip_weight_byte,                                                     # a flipped bit in a tensor
    lambda data: data.replace(b"sha256", b"sha257"),                      # the checksum entry renamed
    lambda data: b"",                                                      # empty file
])
def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, damage):
    save_checkpoint(tmp_path, 1, {"iteration": 1, "w": WEIGHT})
    newest = save_checkpoint(tmp_path, 2, {"iteration": 2, "w": WEIGHT})
    newest.write_bytes(damage(newest.read_bytes()))
    with pytest.raises(MamlkitError, match="truncated or corrupt"):
        read_checkpoint(newest)
    with pytest.warns(UserWarning, match="trying the previous one"):
        state, path = load_latest_checkpoint(tmp_path)
    assert state["iteration"] == 1


def test_no_usable_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(MamlkitError, match="no checkpoint in .*; train the run first"):
        load_latest_checkpoint(tmp_path)
    save_checkpoint(tmp_path, 1, {"iteration": 1}).write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(MamlkitError, match="every checkpoint .* is corrupt; train the run again from iteration 0"):
        load_latest_checkpoint(tmp_path)


def test_checkpoint_opens_with_plain_torch_load_weights_only(tmp_path):
    state = {"iteration": 3, "torch_rng": torch.get_rng_state(), "learners": {"maml": {"w": WEIGHT}}}
    path = save_checkpoint(tmp_path, 3, state)
    saved = torch.load(path, weights_only=True)
    assert saved["format"] == 2 and saved["sha256"] == state_digest(state)
    assert torch.equal(saved["state"]["learners"]["maml"]["w"], WEIGHT)


def test_first_format_checkpoint_still_loads(tmp_path):
    """Checkpoints written before the change: a text header line with the payload's SHA-256."""
    buffer = io.BytesIO()
    torch.save({"iteration": 7, "w": WEIGHT}, buffer)
    payload = buffer.getvalue()
    path = tmp_path / "ckpt-000000007.pt"
    path.write_bytes(b"mamlkit-checkpoint sha256=" + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    state, found = load_latest_checkpoint(tmp_path)
    assert found == path and state["iteration"] == 7 and torch.equal(state["w"], WEIGHT)
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.raises(MamlkitError, match="truncated or corrupt"):
        read_checkpoint(path)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    """weights_only=True: a pickle that calls a function on load is treated as a damaged file."""
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "ckpt-000000001.pt"
    torch.save({"format": 2, "sha256": "x", "state": Payload()}, path)
    with pytest.raises(MamlkitError, match="truncated or corrupt"):
        read_checkpoint(path)


def test_exported_weights_open_with_safetensors(tmp_path):
    from safetensors.torch import load_file

    export_weights(tmp_path, {"maml": {"0.weight": WEIGHT.reshape(2, 3).t(), "steps": 3}}, iteration=5)
    loaded = load_file(tmp_path / "weights.safetensors")
    assert list(loaded) == ["maml.0.weight"] and torch.equal(loaded["maml.0.weight"], WEIGHT.reshape(2, 3).t())
