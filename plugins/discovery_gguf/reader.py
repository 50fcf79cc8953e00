"""A GGUF header reader: metadata key/values and tensor infos, without loading vocabularies or weights.

The reader never maps the file and never materialises a large array: numeric arrays are skipped by seeking past
``count × size`` bytes, and string arrays (token lists of 150k+ entries, BPE merges) are skipped by one of two ways:

- a fast path that looks for the header of the *next* key/value (``<u64 length><namespace.key><u32 type>``, e.g.
  ``tokenizer.ggml.scores`` after ``tokenizer.ggml.tokens``) with ``bytes.find`` over bounded windows;
- an exact walk over the string lengths.

Any inconsistency met after a fast skip (a malformed key, a key count that runs into the tensor infos, tensor infos
that do not fit the file) makes the reader start over with exact walks only, so a fast read is either right or
falls back — it never returns wrong metadata. Memory stays bounded by the window size whatever the vocabulary size.

Files are read with ``os.pread`` (no ``mmap``: a file shrinking under a mapping kills the process with SIGBUS).
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise
from typing import Any

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
#: Most bytes read at once; also the bound on the reader's memory. Reads start at FIRST_WINDOW and double.
WINDOW = 1 << 20
FIRST_WINDOW = 64 << 10
#: Arrays at most this long keep their values (per-layer head counts, small lists); longer ones keep only a count.
KEEP_NUMERIC = 1024
KEEP_STRINGS = 64
#: String arrays shorter than this are walked; the fast path only pays off on vocabularies.
FAST_MIN_COUNT = 4096
#: The fast path gives up after searching ``count × FAST_MAX_AVG`` bytes past the shortest possible end.
FAST_MAX_AVG = 48
_KEY_CHARS = re.compile(rb"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*\Z")


class GGUFError(ValueError):
    """The file is not a readable GGUF model; ``reason`` says why in a few words."""

    def __init__(self, reason: str, path: str | os.PathLike[str] | None = None) -> None:
        self.reason = reason
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class NotGGUFError(GGUFError):
    """The file does not start with the GGUF magic (or is a GGUF version llama.cpp cannot read)."""


class TruncatedError(GGUFError):
    """The file ends before its header or tensor data does (often an incomplete download)."""


class CorruptError(GGUFError):
    """The header holds values no valid GGUF file has."""


class _FastPathMiss(Exception):
    """A fast string-array skip led somewhere inconsistent: read the file again with exact walks."""


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALARS: dict[int, tuple[str, int]] = {
    ValueType.UINT8: ("B", 1), ValueType.INT8: ("b", 1), ValueType.UINT16: ("H", 2), ValueType.INT16: ("h", 2),
    ValueType.UINT32: ("I", 4), ValueType.INT32: ("i", 4), ValueType.FLOAT32: ("f", 4), ValueType.BOOL: ("?", 1),
    ValueType.UINT64: ("Q", 8), ValueType.INT64: ("q", 8), ValueType.FLOAT64: ("d", 8),
}

#: ggml tensor types: id → (name, elements per block, bytes per block). Unknown (newer) types are tolerated.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}

#: ``general.file_type`` (llama.cpp ``llama_ftype``) → the label used in file names and by Ollama / LM Studio.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_SOME_F16", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    33: "Q4_0_4_4", 34: "Q4_0_4_8", 35: "Q4_0_8_8", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4",
    40: "Q1_0",
}
FILE_TYPE_GUESSED = 1024
#: A length beyond the end of the file is a truncation below this size, a corruption above it.
PLAUSIBLE_BYTES = 1 << 40


def quantization_label(file_type: int | None, tensors: list[TensorInfo] | None = None) -> str | None:
    """The quantization label (``Q4_K_M``, ``Q8_0``, ``F16`` ...) of a file.

    From ``general.file_type`` when present; otherwise the type holding most weights among 2-D tensors.
    """
    if file_type is not None:
        base = int(file_type) & ~FILE_TYPE_GUESSED
        return FILE_TYPES.get(base, f"FT{base}")
    if not tensors:
        return None
    weights: dict[int, int] = {}
    for t in tensors:
        if len(t.shape) >= 2:
            weights[t.type] = weights.get(t.type, 0) + t.n_elements
    if not weights:
        return None
    dominant = max(weights, key=lambda k: weights[k])
    return GGML_TYPES.get(dominant, (f"T{dominant}", 1, 0))[0]


@dataclass(frozen=True, slots=True)
class GGUFArray:
    """An array value: its element type and length; ``values`` only for short arrays."""

    type: ValueType
    count: int
    values: tuple[Any, ...] | None = None

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type: int
    offset: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.type, (f"T{self.type}", 1, 0))[0]

    @property
    def nbytes(self) -> int | None:
        """Bytes of tensor data, or ``None`` for a ggml type this reader does not know."""
        info = GGML_TYPES.get(self.type)
        if info is None:
            return None
        _, block, size = info
        return self.n_elements // block * size


@dataclass(slots=True)
class GGUFFile:
    """What the header of one GGUF file says."""

    path: str
    size: int
    mtime: float
    version: int
    byte_order: str
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    alignment: int
    data_offset: int
    #: How the big string arrays were skipped: "fast", "exact" or "none" (for benchmarks and tests).
    skip_mode: str = "none"

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    @property
    def tensor_count(self) -> int:
        return len(self.tensors)

    @property
    def n_elements(self) -> int:
        """Elements of every tensor in this file (the parameter count of a single-file model)."""
        return sum(t.n_elements for t in self.tensors)

    @property
    def quantization(self) -> str | None:
        ft = self.metadata.get("general.file_type")
        return quantization_label(ft if isinstance(ft, int) else None, self.tensors)


class _Reader:
    """Sequential parsing over a file through one bounded window of bytes."""

    def __init__(self, fd: int, size: int, path: str, *, fast: bool) -> None:
        self.fd = fd
        self.size = size
        self.path = path
        self.fast = fast
        self.fast_used = False
        self.exact_used = False
        self.buf = b""
        self.window = FIRST_WINDOW
        self.base = 0
        self.pos = 0
        self.e = "<"
        self.namespaces: list[bytes] = []
        #: Key/values still to read after the current one (a last array is followed by tensor infos, not a key).
        self.kv_left = 0

    # --- raw access -------------------------------------------------------------------------------------------

    def truncated(self, need: int, what: str) -> TruncatedError:
        return TruncatedError(
            f"truncated: {what} needs bytes up to offset {self.pos + need:,} but the file has {self.size:,} "
            "(incomplete download?)", self.path)

    def fill(self, n: int, what: str) -> int:
        """Make ``[pos, pos + n)`` available in ``buf``; return its offset in ``buf``."""
        off = self.pos - self.base
        if 0 <= off and off + n <= len(self.buf):
            return off
        if self.pos + n > self.size:
            if self.fast_used:
                raise _FastPathMiss
            raise self.truncated(n, what)
        want = max(n, min(self.window, WINDOW))
        self.window *= 2  # a file read past its first window has big arrays: read more at a time
        self.buf = b""  # drop the old window before reading the next one
        self.buf = os.pread(self.fd, min(want, self.size - self.pos), self.pos)
        self.base = self.pos
        if len(self.buf) < n:  # the file shrank while being read
            raise self.truncated(n, what)
        return 0

    def skip(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            if self.fast_used:
                raise _FastPathMiss
            raise self.truncated(n, what)
        self.pos += n

    def scalar(self, vtype: int, what: str) -> Any:
        fmt, size = _SCALARS[vtype]
        off = self.fill(size, what)
        self.pos += size
        return struct.unpack_from(self.e + fmt, self.buf, off)[0]

    def u32(self, what: str) -> int:
        return self.scalar(ValueType.UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(ValueType.UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(what)
        if self.pos + n > self.size:
            self.too_big(what, n)
        off = self.fill(n, what)
        self.pos += n
        return self.buf[off:off + n].decode("utf-8", errors="replace")

    def too_big(self, what: str, nbytes: int) -> None:
        """``what`` needs ``nbytes`` from here but the file is shorter: truncated if plausible, else corrupt."""
        if nbytes < PLAUSIBLE_BYTES:
            if self.fast_used:
                raise _FastPathMiss
            raise self.truncated(nbytes, what)
        self.corrupt(f"{what}: needs {nbytes:,} bytes, larger than the file")

    def corrupt(self, reason: str) -> None:
        if self.fast_used:
            raise _FastPathMiss
        raise CorruptError(f"corrupt: {reason}", self.path)

    # --- values -----------------------------------------------------------------------------------------------

    def value(self, vtype: int, key: str) -> Any:
        if vtype == ValueType.STRING:
            return self.string(f"value of {key}")
        if vtype == ValueType.ARRAY:
            return self.array(key)
        if vtype not in _SCALARS:
            self.corrupt(f"{key}: unknown value type {vtype}")
        return self.scalar(vtype, f"value of {key}")

    def array(self, key: str) -> GGUFArray:
        what = f"array {key}"
        etype = self.u32(what)
        count = self.u64(what)
        if etype in _SCALARS:
            fmt, size = _SCALARS[etype]
            nbytes = count * size
            if self.pos + nbytes > self.size:
                self.too_big(what, nbytes)
            if count <= KEEP_NUMERIC:
                off = self.fill(nbytes, what)
                self.pos += nbytes
                return GGUFArray(ValueType(etype), count, struct.unpack_from(f"{self.e}{count}{fmt}", self.buf, off))
            self.skip(nbytes, what)
            return GGUFArray(ValueType(etype), count)
        if etype == ValueType.STRING:
            if self.pos + count * 8 > self.size:
                self.too_big(what, count * 8)
            if count <= KEEP_STRINGS:
                return GGUFArray(ValueType.STRING, count, tuple(self.string(what) for _ in range(count)))
            if count >= FAST_MIN_COUNT and self.fast and self.kv_left and self.skip_strings_fast(count, key):
                return GGUFArray(ValueType.STRING, count)
            self.walk_strings(count, what)
            return GGUFArray(ValueType.STRING, count)
        if etype == ValueType.ARRAY:
            for _ in range(count):
                self.array(key)
            return GGUFArray(ValueType.ARRAY, count)
        self.corrupt(f"{key}: unknown array element type {etype}")
        raise AssertionError  # unreachable

    def walk_strings(self, count: int, what: str) -> None:
        """Step over ``count`` length-prefixed strings, reading only their lengths."""
        self.exact_used = True
        unpack = struct.Struct(self.e + "Q").unpack_from
        remaining = count
        while remaining:
            buf = self.buf
            off = self.pos - self.base
            end = len(buf)
            if 0 <= off <= end:
                while remaining and off + 8 <= end:
                    nxt = off + 8 + unpack(buf, off)[0]
                    if nxt > end:
                        break
                    off = nxt
                    remaining -= 1
                self.pos = self.base + off
            buf = b""  # let the refill below replace the window rather than hold two
            if remaining:
                n = self.u64(what)
                if self.pos + n > self.size:
                    self.too_big(what, n)
                if n > WINDOW:
                    self.skip(n, what)
                else:
                    self.fill(n, what)
                    self.pos += n
                remaining -= 1

    def skip_strings_fast(self, count: int, key: str) -> bool:
        """Jump to the next key/value header after a long string array; False when it cannot be found cheaply."""
        lo = self.pos + 8 * count  # every element takes at least its 8-byte length
        if lo > self.size:
            return False
        hi = min(self.size, lo + count * FAST_MAX_AVG)
        own = key.split(".", 1)[0].encode() + b"."
        order = [own] + [ns for ns in self.namespaces if ns != own]
        self.buf = b""  # the search reads its own windows; the parse resumes elsewhere
        self.base = 0
        for ns in order:
            found = self._search_key_header(ns, lo, hi)
            if found is not None:
                self.pos = found
                self.fast_used = True
                return True
        return False

    def _search_key_header(self, ns: bytes, lo: int, hi: int) -> int | None:
        overlap = 8 + 256 + 4
        start = lo
        while start < hi:
            # The window starts 8 bytes early so that a key's length field is inside it.
            wstart = max(lo, start - 8)
            chunk = os.pread(self.fd, min(WINDOW + overlap, hi + overlap - wstart, self.size - wstart), wstart)
            if not chunk:
                return None
            i = chunk.find(ns, start - wstart)
            while i != -1:
                if i >= 8 and wstart + i - 8 >= lo:
                    klen = struct.unpack_from(self.e + "Q", chunk, i - 8)[0]
                    if len(ns) < klen <= 256 and i + klen + 4 <= len(chunk) and \
                            _KEY_CHARS.match(chunk, i, i + klen):
                        vtype = struct.unpack_from(self.e + "I", chunk, i + klen)[0]
                        if vtype <= ValueType.FLOAT64:
                            return wstart + i - 8
                i = chunk.find(ns, i + 1)
            chunk = b""  # free this window before reading the next
            start = wstart + WINDOW
        return None

    # --- structure --------------------------------------------------------------------------------------------

    def header(self) -> tuple[int, int, int]:
        off = self.fill(4, "magic") if self.size >= 4 else None
        if off is None or self.buf[off:off + 4] != GGUF_MAGIC:
            head = self.buf[:4] if self.buf else b""
            if self.size < 4:
                raise NotGGUFError(f"not a GGUF file ({self.size} bytes)", self.path)
            raise NotGGUFError(f"not a GGUF file (starts with {head!r}, expected b'GGUF')", self.path)
        self.pos = 4
        version = self.u32("version")
        if version & 0xFFFF == 0 and version >> 16:
            self.e = ">"  # a big-endian file
            version = struct.unpack("<I", struct.pack(">I", version))[0]
        if version == 1:
            raise NotGGUFError("GGUF version 1 is no longer supported by llama.cpp", self.path)
        if version not in (2, 3):
            raise NotGGUFError(f"unsupported GGUF version {version}", self.path)
        tensor_count = self.u64("tensor count")
        kv_count = self.u64("key/value count")
        if kv_count * 13 > self.size or tensor_count * 25 > self.size:
            announced = f"header announces {kv_count:,} keys and {tensor_count:,} tensors"
            if kv_count < 1 << 20 and tensor_count < 1 << 20:
                raise TruncatedError(f"truncated: {announced} but the file has only {self.size:,} bytes "
                                     "(incomplete download?)", self.path)
            self.corrupt(f"{announced}, more than the file holds")
        return version, tensor_count, kv_count

    def metadata(self, kv_count: int) -> dict[str, Any]:
        kv: dict[str, Any] = {}
        for index in range(kv_count):
            key = self.string(f"key #{index}")
            if not key or (self.fast_used and not _KEY_CHARS.match(key.encode())):
                self.corrupt(f"key #{index} is malformed: {key!r}")
            ns = key.split(".", 1)[0].encode() + b"."
            if ns not in self.namespaces:
                self.namespaces.append(ns)
            vtype = self.u32(f"type of {key}")
            self.kv_left = kv_count - index - 1
            kv[key] = self.value(vtype, key)
        return kv

    def tensor_infos(self, count: int, alignment: int) -> list[TensorInfo]:
        tensors: list[TensorInfo] = []
        for index in range(count):
            name = self.string(f"tensor #{index} name")
            n_dims = self.u32(f"tensor {name} dims")
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                self.corrupt(f"tensor {name!r} has {n_dims} dimensions")
            fmt = f"{self.e}{n_dims}Q"
            off = self.fill(8 * n_dims, f"tensor {name} shape")
            shape = struct.unpack_from(fmt, self.buf, off)
            self.pos += 8 * n_dims
            ttype = self.u32(f"tensor {name} type")
            offset = self.u64(f"tensor {name} offset")
            if offset % alignment:
                self.corrupt(f"tensor {name!r} offset {offset} is not aligned to {alignment}")
            tensors.append(TensorInfo(name, shape, ttype, offset))
        return tensors


def read_gguf(path: str | os.PathLike[str], *, fast: bool = True) -> GGUFFile:
    """Read the header of a GGUF file: metadata (long arrays as :class:`GGUFArray` counts) and tensor infos.

    :param fast: allow the fast skip of long string arrays (always verified; ``False`` forces exact walks).
    :raises NotGGUFError: not a GGUF file, or a version llama.cpp cannot read.
    :raises TruncatedError: the file ends inside the header or the tensor data.
    :raises CorruptError: impossible values in the header.
    :raises OSError: the file cannot be opened or read.
    """
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        try:
            return _parse(fd, st, path, fast=fast)
        except _FastPathMiss:
            return _parse(fd, st, path, fast=False)
    finally:
        os.close(fd)


def _parse(fd: int, st: os.stat_result, path: str, *, fast: bool) -> GGUFFile:
    r = _Reader(fd, st.st_size, path, fast=fast)
    version, tensor_count, kv_count = r.header()
    kv = r.metadata(kv_count)
    alignment = kv.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        r.corrupt(f"general.alignment {alignment!r} is not a power of two")
    tensors = r.tensor_infos(tensor_count, alignment)
    data_offset = -(-r.pos // alignment) * alignment
    _check_data(r, tensors, data_offset)
    mode = "fast" if r.fast_used else ("exact" if r.exact_used else "none")
    return GGUFFile(
        path=path, size=st.st_size, mtime=st.st_mtime, version=version,
        byte_order="big" if r.e == ">" else "little", metadata=kv, tensors=tensors,
        alignment=alignment, data_offset=data_offset, skip_mode=mode,
    )


def _check_data(r: _Reader, tensors: list[TensorInfo], data_offset: int) -> None:
    """Every tensor's bytes must lie inside the file: a shorter file is an incomplete download."""
    end = data_offset
    spans = []
    for t in tensors:
        nbytes = t.nbytes
        if nbytes is None:
            continue
        spans.append((t.offset, t.offset + nbytes, t.name))
        end = max(end, data_offset + t.offset + nbytes)
    if r.fast_used:
        spans.sort()
        for (_, a_end, _), (b_start, _, _) in pairwise(spans):
            if b_start < a_end:
                raise _FastPathMiss
    if end > r.size:
        if r.fast_used:
            raise _FastPathMiss
        raise TruncatedError(
            f"truncated: tensor data ends at byte {end:,} but the file has {r.size:,} (incomplete download?)", r.path)


def scalar_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata with every array replaced by its length (what an API shows as raw GGUF keys)."""
    return {k: (len(v) if isinstance(v, GGUFArray) else v) for k, v in metadata.items()}

