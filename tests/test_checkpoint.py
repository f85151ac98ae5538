"""Atomic, checksummed checkpoints and the fall-back past damaged ones."""

import hashlib
import io

import pytest
import torch

from mamlkit import MamlkitError
from mamlkit.engine.checkpoint import (BestCheckpoint, export_weights, load_best, load_latest_checkpoint,
                                       read_checkpoint, save_checkpoint, state_digest)


def test_round_trip_and_pruning(tmp_path):
    for iteration in (10, 20, 30):
        save_checkpoint(tmp_path, iteration, {"iteration": iteration, "w": torch.arange(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000020.pt", "ckpt-000000030.pt"]
    state, path = load_latest_checkpoint(tmp_path)
    assert state["iteration"] == 30 and torch.equal(state["w"], torch.arange(3))


def saved_iterations(directory) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in directory.glob("ckpt-*.pt"))


def test_best_checkpoints_keep_the_top_scores_across_a_resume(tmp_path):
    scores = {1: 0.5, 2: 0.7, 3: 0.6, 4: 0.7, 5: 0.4, 6: 0.65}
    best = BestCheckpoint(tmp_path, "val", keep=3)
    for iteration in (1, 2, 3):
        best.offer(iteration, scores[iteration], {"w": torch.tensor(iteration)})
    assert saved_iterations(tmp_path) == [1, 2, 3]
    resumed = BestCheckpoint(tmp_path, "val", keep=3)  # a new process reads the scores from the files
    for iteration in (4, 5, 6):
        resumed.offer(iteration, scores[iteration], {"w": torch.tensor(iteration)})
    assert saved_iterations(tmp_path) == [2, 4, 6]  # 0.7, 0.7, 0.65: 0.6 and below dropped
    ranked = load_best(tmp_path, "val", count=5)
    assert [s["iteration"] for s in ranked] == [2, 4, 6]  # best first; the tie goes to the earlier
    assert [s["w"].item() for s in ranked] == [2, 4, 6] and load_best(tmp_path, "val")[0]["val"] == 0.7


def test_best_checkpoint_skips_and_then_replaces_a_damaged_one(tmp_path):
    best = BestCheckpoint(tmp_path, "val", keep=2)
    best.offer(1, 0.9, {})
    best.offer(2, 0.5, {})
    (tmp_path / "ckpt-000000001.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipping it"):
        assert [s["iteration"] for s in load_best(tmp_path, "val", count=2)] == [2]
    with pytest.warns(UserWarning, match="skipping it"):
        BestCheckpoint(tmp_path, "val", keep=2).offer(3, 0.1, {})
    assert saved_iterations(tmp_path) == [2, 3]  # the damaged file is gone once two good ones are kept


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
