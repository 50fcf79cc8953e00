"""Discovery: read the headers of a folder of GGUF files with big vocabularies.

Writes ``--files`` (500) GGUF files whose metadata holds a ``--vocab`` (150,000) entry token list — plus scores and
token types of the same length, as converters write them, and a few small tensors — then measures:

- the plugin's reader (``read_gguf``) per file, with the fast verified skip of string arrays and with exact walks;
- a full ``Scanner.scan`` of the folder (walk + read + metadata), then a rescan (nothing changed: cache hits);
- the reference reader, ``gguf.GGUFReader`` (the ``gguf`` package), on ``--reference-files`` (3) of the same files,
  which is all it can do in reasonable time; its metadata is checked equal to ours on those files;
- peak Python memory (tracemalloc) of one read for vocabularies of 10k, 150k and 600k tokens, ours and the reference's.

Targets (issue 7): ≤ 2 ms per file (≤ 1 s for the 500), memory that does not grow with the vocabulary.

Run: ``.venv/bin/python bench/bench_discovery.py`` (``--help``: ``--files``, ``--vocab``, ``--merges``, ``--dir``).
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_line, percentile  # noqa: E402

from llama_host_discovery_gguf.reader import read_gguf, scalar_metadata  # noqa: E402
from llama_host_discovery_gguf.scan import Scanner  # noqa: E402

# --- writing GGUF files quickly (the gguf package takes seconds per 150k-token file) ---------------------------------

U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10


def _str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _str(key.encode()) + struct.pack("<I", vtype) + payload


def vocabulary_blob(n: int, seed: int) -> bytes:
    """``n`` length-prefixed BPE-like tokens (``Ġ``-prefixed words, pieces, punctuation), 6–7 bytes on average."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzetaoinshr"
    out = bytearray()
    for i in range(n):
        word = "".join(rng.choice(letters) for _ in range(rng.choice((1, 2, 3, 4, 5, 6, 7, 8))))
        token = ("\u0120" + word if i % 3 == 0 else word) + (str(i) if i % 11 == 0 else "")
        b = token.encode()
        out += struct.pack("<Q", len(b)) + b
    return bytes(out)


def merges_blob(n: int, seed: int) -> bytes:
    rng = random.Random(seed + 1)
    out = bytearray()
    for _ in range(n):
        b = f"\u0120{rng.choice('abcdefgh')}{rng.choice('ijklmnop')} {rng.choice('qrstuvwxyz')}".encode()
        out += struct.pack("<Q", len(b)) + b
    return bytes(out)


def gguf_bytes(name: str, vocab: bytes, n_vocab: int, merges: bytes = b"", n_merges: int = 0) -> bytes:
    """A llama-architecture GGUF: the usual keys, the tokenizer arrays, and two small F32 tensors."""
    kvs = [
        _kv("general.architecture", STRING, _str(b"llama")),
        _kv("general.name", STRING, _str(name.encode())),
        _kv("general.file_type", U32, struct.pack("<I", 15)),
        _kv("llama.context_length", U32, struct.pack("<I", 32768)),
        _kv("llama.embedding_length", U32, struct.pack("<I", 4096)),
        _kv("llama.block_count", U32, struct.pack("<I", 32)),
        _kv("llama.feed_forward_length", U32, struct.pack("<I", 14336)),
        _kv("llama.attention.head_count", U32, struct.pack("<I", 32)),
        _kv("llama.attention.head_count_kv", U32, struct.pack("<I", 8)),
        _kv("llama.rope.freq_base", F32, struct.pack("<f", 1e6)),
        _kv("llama.vocab_size", U32, struct.pack("<I", n_vocab)),
        _kv("tokenizer.ggml.model", STRING, _str(b"gpt2")),
        _kv("tokenizer.ggml.pre", STRING, _str(b"qwen2")),
        _kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, n_vocab) + vocab),
        _kv("tokenizer.ggml.token_type", ARRAY, struct.pack("<IQ", I32, n_vocab) + b"\x01\x00\x00\x00" * n_vocab),
    ]
    if n_merges:
        kvs.append(_kv("tokenizer.ggml.merges", ARRAY, struct.pack("<IQ", STRING, n_merges) + merges))
    kvs += [
        _kv("tokenizer.ggml.eos_token_id", U32, struct.pack("<I", 2)),
        _kv("tokenizer.ggml.add_bos_token", BOOL, b"\x00"),
        _kv("tokenizer.chat_template", STRING,
            _str(b"{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                 b"{% if tools %}{{ tools | tojson }}{% endif %}")),
        _kv("general.quantization_version", U32, struct.pack("<I", 2)),
    ]
    tensors = [("token_embd.weight", (64, 16)), ("output_norm.weight", (64,))]
    infos = b""
    offset = 0
    for tname, shape in tensors:
        infos += _str(tname.encode()) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
        infos += struct.pack("<IQ", 0, offset)
        n = 1
        for d in shape:
            n *= d
        offset += -(-n * 4 // 32) * 32
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + infos
    head += b"\x00" * (-len(head) % 32)
    return head + b"\x00" * offset


def write_folder(folder: Path, files: int, n_vocab: int, n_merges: int) -> tuple[int, float]:
    started = time.perf_counter()
    vocab = vocabulary_blob(n_vocab, 0)
    merges = merges_blob(n_merges, 0) if n_merges else b""
    total = 0
    for i in range(files):
        sub = folder / f"org{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        data = gguf_bytes(f"model {i:04d}", vocab, n_vocab, merges, n_merges)
        (sub / f"model-{i:04d}-Q4_K_M.gguf").write_bytes(data)
        total += len(data)
    return total, time.perf_counter() - started


# --- measuring ----------------------------------------------------------------------------------------------------


def time_reads(paths: list[Path], *, fast: bool) -> list[float]:
    times = []
    for p in paths:
        t = time.perf_counter()
        read_gguf(p, fast=fast)
        times.append(time.perf_counter() - t)
    return times


def summary(times: list[float]) -> str:
    ms = [t * 1000 for t in times]
    return (f"mean {statistics.fmean(ms):.3f} ms  p50 {percentile(ms, 50):.3f} ms  p99 {percentile(ms, 99):.3f} ms  "
            f"total {sum(ms) / 1000:.3f} s")


def peak_memory(fn) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def reference_metadata(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = len(field.data) if field.types and field.types[0] == gguf.GGUFValueType.ARRAY else field.contents()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--vocab", type=int, default=150_000, help="entries of tokenizer.ggml.tokens")
    ap.add_argument("--merges", type=int, default=0, help="entries of tokenizer.ggml.merges (0: none)")
    ap.add_argument("--reference-files", type=int, default=3, help="files read with gguf.GGUFReader (slow)")
    ap.add_argument("--dir", type=Path, help="where to write the files (default: a temporary folder, removed)")
    args = ap.parse_args()

    print(machine_line())
    root = Path(tempfile.mkdtemp(prefix="bench-discovery-", dir=args.dir))
    try:
        folder = root / "models"
        size, took = write_folder(folder, args.files, args.vocab, args.merges)
        paths = sorted(folder.rglob("*.gguf"))
        print(f"wrote {len(paths)} files, {args.vocab:,} tokens + {args.vocab:,} token types"
              f"{f' + {args.merges:,} merges' if args.merges else ''} each, {size / 2**20:.0f} MiB in all "
              f"({size / len(paths) / 2**20:.2f} MiB per file), in {took:.1f} s")

        time_reads(paths[:20], fast=True)  # warm up imports and the page cache of the first files
        fast = time_reads(paths, fast=True)
        exact = time_reads(paths, fast=False)
        modes = {read_gguf(p).skip_mode for p in paths[:5]}
        print(f"read_gguf (fast, verified; mode {','.join(sorted(modes))}): {summary(fast)}")
        print(f"read_gguf (exact walks only):             {summary(exact)}")

        scanner = Scanner()
        t = time.perf_counter()
        result = scanner.scan([folder])
        first_scan = time.perf_counter() - t
        t = time.perf_counter()
        again = scanner.scan([folder])
        rescan = time.perf_counter() - t
        assert len(result.models) == len(paths) and not result.errors, result.errors[:3]
        print(f"Scanner.scan of the folder: {first_scan:.3f} s for {len(result.models)} models "
              f"({first_scan / len(paths) * 1000:.3f} ms per file); rescan with nothing changed: {rescan * 1000:.1f} ms "
              f"({len(again.read)} files re-read)")

        n_ref = min(args.reference_files, len(paths))
        if n_ref:
            try:
                import gguf  # noqa: F401
            except ImportError:
                print("gguf package not installed: reference reader skipped (pip install gguf)")
            else:
                ref_times = []
                for p in paths[:n_ref]:
                    t = time.perf_counter()
                    ref = reference_metadata(p)
                    ref_times.append(time.perf_counter() - t)
                    assert ref == scalar_metadata(read_gguf(p).metadata), f"metadata differs on {p}"
                print(f"gguf.GGUFReader on {n_ref} of the files (metadata identical to ours): {summary(ref_times)} "
                      f"→ {statistics.fmean(ref_times) / statistics.fmean(fast):.0f}× slower per file")

        print("peak Python memory of one read (tracemalloc):")
        for n in (10_000, 150_000, 600_000):
            p = root / f"vocab-{n}.gguf"
            p.write_bytes(gguf_bytes("mem", vocabulary_blob(n, 1), n))
            ours_fast = peak_memory(lambda p=p: read_gguf(p, fast=True))
            ours_exact = peak_memory(lambda p=p: read_gguf(p, fast=False))
            line = (f"  vocab {n:>7,}: file {p.stat().st_size / 2**20:6.1f} MiB | read_gguf fast "
                    f"{ours_fast / 2**20:5.2f} MiB, exact {ours_exact / 2**20:5.2f} MiB")
            if n_ref and n <= 150_000:
                try:
                    import gguf
                except ImportError:
                    pass
                else:
                    ref_peak = peak_memory(lambda p=p: gguf.GGUFReader(p))
                    line += f" | gguf.GGUFReader {ref_peak / 2**20:7.1f} MiB"
            print(line)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
