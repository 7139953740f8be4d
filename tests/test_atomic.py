"""Atomic file writes: a reader sees the old bytes or the new ones, never a mix, never a half."""

import multiprocessing as mp
import os

import pytest

from pipeline.config import write_atomic


def _writer(path, byte, n, barrier):
    barrier.wait()
    for _ in range(20):
        write_atomic(path, bytes([byte]) * n)


def test_concurrent_writers_never_mix_bytes(tmp_path):
    path, n = tmp_path / "f.bin", 1 << 20
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(path), b, n, barrier)) for b in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = path.read_bytes()
    assert len(data) == n and len(set(data)) == 1  # one writer's whole file
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]  # no temporaries left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "f.txt", "old")

    def broken(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new")
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["f.txt"]
