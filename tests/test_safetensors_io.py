"""Safetensors headers are validated before any allocation, for every loader (issue 10 case 8)."""

from __future__ import annotations

import json
import os
import signal
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from humanaes.errors import CheckpointError
from humanaes.models.expert import checkpoint
from humanaes.safetensors_io import MAX_HEADER_BYTES, load_safetensors, read_header

BUNDLED = Path(__file__).resolve().parents[1] / "humanaes" / "models" / "mini"


def _craft(path: Path, header: dict, data: bytes = b"", *, declared_len: int | None = None) -> Path:
    """A safetensors file with a hand-written header (no validation on the way in)."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if declared_len is None else declared_len) + raw + data)
    return path


def test_reads_every_dtype_bit_identical_to_the_reference_reader(tmp_path):
    tensors = {
        "f32": torch.randn(3, 5),
        "bf16": torch.randn(4, 2).to(torch.bfloat16),
        "f16": torch.randn(7).half(),
        "i64": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "u8": torch.arange(10, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    ours, reference = load_safetensors(path), load_file(str(path))
    assert list(ours) == sorted(ours, key=lambda k: read_header(path).names().index(k))
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape
        assert torch.equal(ours[key], value), key
    assert read_header(path).metadata == {"format": "pt"}
    cast = load_safetensors(path, dtype=torch.float16)
    assert cast["f32"].dtype == torch.float16 and cast["i64"].dtype == torch.int64  # only floats are cast


def test_packaged_bundled_weights_read_identically():
    weights = BUNDLED / "humanaes-mini.safetensors"
    ours, reference = load_safetensors(weights), load_file(str(weights))
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


# Each crafted file: (header, data bytes, text the one-line error must carry).
HUGE = {"w": {"dtype": "F32", "shape": [10_000_000, 10_000_000], "data_offsets": [0, 400_000_000_000_000]}}
CASES = {
    "tensor bigger than the file (40 TB)": ({"w": {"dtype": "F32", "shape": [10_000_000, 1_000_000], "data_offsets": [0, 40_000_000_000_000]}}, b"\0" * 16, "only"),
    "tensor ends past the file": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "'w' declares 16 bytes"),
    "span differs from dtype x shape": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 16, "needs 16 bytes"),
    "huge shape, small span": ({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4]}}, b"\0" * 4, "needs"),
    "overlapping tensors": (
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
        b"\0" * 12,
        "overlap",
    ),
    "start after end": ({"w": {"dtype": "U8", "shape": [0], "data_offsets": [8, 4]}}, b"\0" * 8, "start <= end"),
    "negative offset": ({"w": {"dtype": "U8", "shape": [2], "data_offsets": [-2, 0]}}, b"\0" * 8, "start <= end"),
    "negative dimension": ({"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}, b"", "non-negative"),
    "boolean dimension": ({"w": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, b"\0", "non-negative"),
    "unknown dtype": ({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16, "unsupported dtype"),
    "missing field": ({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "data_offsets"),
    "header is a list": ([1, 2], b"", "not an object"),
    "bad metadata": ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_crafted_headers_are_one_line_checkpoint_errors(tmp_path, case):
    header, data, needle = CASES[case]
    path = _craft(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError) as info:
        load_safetensors(path)
    message = str(info.value)
    assert str(path) in message and needle in message and "\n" not in message


def test_header_framing_errors(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="too short"):
        read_header(short)
    # A header length beyond the file (or the 100 MB cap) is refused before it is read.
    for declared in (10**6, MAX_HEADER_BYTES + 1, 2**64 - 1):
        path = _craft(tmp_path / f"long{declared}.safetensors", {}, declared_len=declared)
        with pytest.raises(CheckpointError, match="the header declares"):
            read_header(path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_header(garbage)
    twice = tmp_path / "twice.safetensors"
    raw = b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}'
    twice.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0")
    with pytest.raises(CheckpointError, match="appears twice"):
        read_header(twice)


def test_truncated_after_validation_is_still_an_error(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(8)}, str(path))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 4)
    with pytest.raises(CheckpointError, match="'w'"):
        load_safetensors(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)

    def hung(*_: object) -> None:
        raise TimeoutError("opening the FIFO blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises(CheckpointError, match="not a regular file"):
            load_safetensors(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_every_loader_goes_through_the_validator(tmp_path):
    """Our checkpoints, the original layout, humanaes-mini, its face network and trainer checkpoints."""
    bad = _craft(tmp_path / "model.safetensors", HUGE, b"\0" * 16)
    with pytest.raises(CheckpointError, match="model.safetensors: tensor 'w'"):
        checkpoint.checkpoint_keys([bad])
    with pytest.raises(CheckpointError, match="model.safetensors: tensor 'w'"):
        list(checkpoint.iter_tensors([bad]))

    from humanaes.models.mini import facenet
    from humanaes.models.mini.scorer import load_model

    with pytest.raises(CheckpointError, match="tensor 'w'"):
        facenet.load_dlib_facenet(bad)

    mini = tmp_path / "mini"
    mini.mkdir()
    meta = json.loads((BUNDLED / "humanaes-mini.json").read_text())
    meta.pop("weights_sha256")  # the checksum would stop it first; the header check must too
    (mini / "humanaes-mini.json").write_text(json.dumps(meta))
    _craft(mini / "humanaes-mini.safetensors", HUGE, b"\0" * 16)
    with pytest.raises(CheckpointError, match="humanaes-mini.safetensors: tensor 'w'"):
        load_model(mini)

    from humanaes.training import trainer

    with pytest.raises(CheckpointError, match="tensor 'w'"):
        trainer.load_weights(bad)


def test_sharded_index_names_only_files_beside_it(tmp_path):
    (tmp_path / checkpoint.INDEX_NAME).write_text(json.dumps({"weight_map": {"a": "../../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="plain file names"):
        checkpoint.weight_files(tmp_path)
    (tmp_path / checkpoint.INDEX_NAME).write_text(json.dumps({"weight_map": [1]}))
    with pytest.raises(CheckpointError, match="not a sharded-weights index"):
        checkpoint.weight_files(tmp_path)
