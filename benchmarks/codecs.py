"""Codecs for a store's integer ``pixels``: bytes a record, encode and decode time.

Builds a store of the real sample (replicated to ``--records``, default 2,016) with the
default compressor, then compresses every ``pixels`` chunk (64 records of int16) with
each candidate, single-threaded, checks that each round trip gives the chunk back, and
prints a table sorted by bytes a record:

    python benchmarks/codecs.py [--records 2016] [--data ROOT] [--repeats 5]

The sample is 56 records, so a replicated store repeats itself every 56 records; blosc
blocks of up to 1 MiB (8 records of 256 x 256 int16) never hold a repeat, and no
candidate here uses larger ones, so the figures are those of distinct records.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import REAL_DATA, replicate, require_data  # noqa: E402

import daskmri  # noqa: E402

MIB = 1 << 20


def candidates() -> dict[str, object]:
    """The codecs compared, by label (numcodecs objects with encode/decode)."""
    from numcodecs import Blosc, Delta

    byte, bit = Blosc.SHUFFLE, Blosc.BITSHUFFLE

    class Chain:  # a filter then a compressor, as a zarr codec pipeline runs them
        def __init__(self, first, then):
            self.first, self.then = first, then

        def encode(self, x):
            return self.then.encode(self.first.encode(x))

        def decode(self, b):
            return self.first.decode(self.then.decode(b))

    return {
        "blosc lz4 c5 byte (blosc-lz4, the default)": Blosc("lz4", 5, byte),
        "blosc lz4 c9 byte": Blosc("lz4", 9, byte),
        "blosc lz4 c5 bit": Blosc("lz4", 5, bit),
        "blosc lz4hc c5 byte": Blosc("lz4hc", 5, byte),
        "blosc zstd c1 byte (blosc-zstd until 0.3.0)": Blosc("zstd", 1, byte),
        "blosc zstd c1 bit 1 MiB (blosc-zstd)": Blosc("zstd", 1, bit, blocksize=MIB),
        "blosc zstd c3 bit 1 MiB": Blosc("zstd", 3, bit, blocksize=MIB),
        "delta + blosc lz4 c5 byte": Chain(Delta("<i2"), Blosc("lz4", 5, byte)),
    }


def timed(call, repeats: int) -> float:
    """The median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(chunks: list[np.ndarray], records: int, repeats: int) -> list[dict]:
    from numcodecs import blosc

    blosc.use_threads = False  # one thread, as a chunk task or a batch's fetch has
    rows = []
    for label, codec in candidates().items():
        size, encode, decode = 0, [], []
        for chunk in chunks:
            raw = bytes(codec.encode(chunk))
            back = np.frombuffer(codec.decode(raw), chunk.dtype).reshape(chunk.shape)
            if not np.array_equal(back, chunk):
                raise AssertionError(f"{label} does not give the chunk back")
            size += len(raw)
            encode.append(timed(functools.partial(codec.encode, chunk), repeats))
            decode.append(timed(functools.partial(codec.decode, raw), repeats))
        rows.append(
            {
                "codec": label,
                "kb_per_record": size / records / 1000,
                "encode_ms": 1000 * statistics.median(encode),
                "decode_ms": 1000 * statistics.median(decode),
            }
        )
    return sorted(rows, key=lambda r: r["kb_per_record"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2016)
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="daskmri-codecs-"))
    try:
        root = replicate(require_data(args.data), args.records, work)
        daskmri.build(root, work / "ds.zarr")
        pixels = daskmri.open_dataset(work / "ds.zarr").pixels
        values, step = pixels.values, pixels.chunks[0][0]
        chunks = [np.ascontiguousarray(values[k : k + step]) for k in range(0, len(values), step)]
        rows = measure(chunks, len(values), args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # made here
    print(f"\n{len(values):,} records of {values.dtype} {values.shape[1:]}, chunks of {step}")
    print("| codec | KB a record | encode ms a chunk | decode ms a chunk |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['codec']} | {r['kb_per_record']:.1f} | {r['encode_ms']:.1f} "
            f"| {r['decode_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
