"""What a shard's manifest and its verification cost: one shard of 10^5 regions, K = 10,
affine maps kept (float64), written as discovery writes it (64 segments per write), with
random values (incompressible, as float64 maps nearly are).

    .venv/bin/python bench/store_verify.py [FOLDER]      # default: a temporary folder

Prints the commit (manifest: every file read back and CRC-32'd; fsync of the tree; rename),
the cheap and deep checks, and the reads that run them, best of 5 (warm page cache).
"""
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from analysis.collect import store_fingerprint
from pipeline.store.manifest import make_manifest
from pipeline.engine.measures import path_partials
from pipeline.engine.result import RegionResult
from pipeline.store.identity import StoreConfig, open_or_create
from pipeline.store.verify import shard_status, verify_shard
from pipeline.store.lines import ShardWriter, open_store, shard_partials

S, R_PER, K, CHUNK = 1000, 100, 10, 64
rng = np.random.default_rng(0)

root = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()) / "bench.zarr"
shutil.rmtree(root, ignore_errors=True)
open_or_create(root, {"n_shards": 1, "keep_affine": True, "affine_dtype": "float64"})


def chunk(lo, hi):
    n = hi - lo; R = n * R_PER
    t = np.sort(rng.random((n, R_PER - 1)), axis=1)
    edges = np.concatenate([np.zeros((n, 1)), t, np.ones((n, 1))], axis=1)
    return RegionResult(segment_index=np.arange(lo, hi), density=np.full(n, R_PER), region_offset=np.arange(n + 1) * R_PER,
                        f0=rng.normal(size=(n, K)), f1=rng.normal(size=(n, K)), deviation=rng.random((n, K)),
                        total_variation=rng.random((n, K)), continuity_gap=rng.random(n) * 1e-12, length=rng.random(n) + 1,
                        t_start=edges[:, :-1].ravel(), t_end=edges[:, 1:].ravel(), intercept=rng.normal(size=(R, K)),
                        slope=rng.normal(size=(R, K)), certificate_tol=np.zeros(n))


w = ShardWriter(root, 0, np.repeat(np.arange(S // 8), 8), np.tile(np.arange(8), S // 8), K, StoreConfig())
for lo in range(0, S, CHUNK):
    w.write(chunk(lo, min(S, lo + CHUNK)))
t = time.perf_counter(); m = make_manifest(w.tmp, {}); t_manifest = time.perf_counter() - t
t = time.perf_counter(); w.commit(); t_commit = time.perf_counter() - t
files = list((root / "shard-00000").rglob("*"))
size = sum(p.stat().st_size for p in files if p.is_file())
print(f"shard: {S} segments, {S*R_PER:,} regions, K={K}, keep_affine=True: {len([p for p in files if p.is_file()])} files, {size/2**20:.1f} MiB")


def best(f, n=5):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts) * 1e3


print(f"manifest (read back + crc32 of every file): {t_manifest*1e3:.1f} ms; commit (manifest, fsync tree, rename): {t_commit*1e3:.1f} ms")
print(f"verify_shard cheap (stat per file):   {best(lambda: verify_shard(root, 0)):.2f} ms")
print(f"verify_shard deep (crc32 per file):   {best(lambda: verify_shard(root, 0, deep=True)):.2f} ms")
print(f"shard_status cheap:                   {best(lambda: shard_status(root)):.2f} ms")
print(f"shard_partials (deep check of the segment arrays + read): {best(lambda: shard_partials(root, 0)):.2f} ms")


def raw_partials():
    g = zarr.open_group(str(root / "shard-00000" / "segments"), mode="r")
    path_partials(g["path_id"][:], g["density"][:], g["length"][:], g["deviation"][:], g["total_variation"][:], g["continuity_gap"][:])
print(f"  the same read without any check (before): {best(raw_partials):.2f} ms")
print(f"open_store (cheap check of every shard): {best(lambda: open_store(root)):.2f} ms")
print(f"store_fingerprint: {best(lambda: store_fingerprint(root)):.2f} ms")
print(f"read every region array (t_start, t_end, intercept, slope): {best(lambda: [open_store(root).regions(n).compute() for n in ('t_start','t_end','intercept','slope')], 3):.1f} ms")
