"""Client request bodies, decided once for every surface: hostile JSON becomes a ``BadRequest`` (a 4xx in the
surface's dialect), never a 500 and never a traceback in the log.

Refused: invalid JSON or UTF-8, nesting deeper than ``MAX_DEPTH``, numbers out of range (``1e400``, integers beyond
64 bits), values of the
wrong type for the surface's typed view, and count fields below the minimum a surface names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, overload

import msgspec

from llama_host.errors import BadRequest

#: Deepest nesting of arrays and objects a request body may have. Real requests (chat with tools and JSON schemas)
#: stay far below; a limit well under Python's recursion limit keeps every later walk of the value safe too.
MAX_DEPTH = 64

T = TypeVar("T")
#: digits to b"9", ``[`` and ``{`` to b"[", every other byte to b" ": one pass, then the openings are counted and a run
#: of 20 digits is a plain substring search (a regular expression for it tries a match at every byte: ~12x slower,
#: 2 ms for a 100 KB chat)
_SCAN = bytes(0x39 if 0x30 <= b <= 0x39 else 0x5B if b in b"[{" else 0x20 for b in range(256))
_LONG_RUN = b"9" * 20
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1
_NUMBERS = frozenset((int, float))
_decode_any = msgspec.json.Decoder().decode


@overload
def decode_json(raw: bytes, type: None = None, *, minimums: Mapping[str, int] | None = None) -> Any: ...


@overload
def decode_json(raw: bytes, type: type[T], *, minimums: Mapping[str, int] | None = None) -> T: ...


def decode_json(raw: bytes, type: Any = None, *, minimums: Mapping[str, int] | None = None) -> Any:
    """Decode a client's JSON body (as ``type`` when given, else as plain JSON values).

    :param raw: the body bytes.
    :param type: a msgspec-convertible type (a request Struct) or ``None`` for any JSON value.
    :param minimums: count keys and their least values (``{"n": 1, "max_tokens": -1}``: -1 = no limit); ``a.b``
        names key ``b`` of the object under ``a`` (``options.num_ctx``).
    :raises BadRequest: with a message fit for the client.
    """
    if not raw or raw.isspace():  # not ``raw.strip()``: no copy of the body
        raise BadRequest("the request body is empty")
    try:
        value = _decode_any(raw) if type is None else msgspec.json.decode(raw, type=type)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"the request body is nested more than {MAX_DEPTH} levels deep") from None
    scan = raw.translate(_SCAN)
    deep = scan.count(b"[") > MAX_DEPTH  # only then can the value be too deep
    # only a run of 20 digits can be an integer out of range (msgspec keeps big ints). ``find``, not ``in``: on
    # bytes, ``in`` first tries the needle as an int and raises and clears a TypeError inside (~1.9k instructions)
    huge = scan.find(_LONG_RUN) != -1
    if deep or huge:  # most bodies skip the walk
        _check_tree(value if type is None else msgspec.to_builtins(value))
    if minimums:
        _check_minimums(value, minimums)
    return value


def _check_tree(value: Any) -> None:
    """Depth and integer range (64-bit, what every runner can hold) of a decoded body."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"the request body is nested more than {MAX_DEPTH} levels deep")
        for child in (node.values() if isinstance(node, dict) else node):
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif isinstance(child, int) and not _INT_MIN <= child <= _UINT_MAX:
                raise BadRequest("a number in the request body is out of range (integers must fit in 64 bits)")


def _field(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else getattr(value, key, None)


def _check_minimums(value: Any, minimums: Mapping[str, int]) -> None:
    flat = isinstance(value, dict)
    for key, least in minimums.items():
        if flat and "." not in key:  # the common case: a key of the body object
            number = value.get(key)
        else:
            number = value
            for part in key.split("."):  # "options.num_ctx": a key inside an object
                number = _field(number, part)
                if number is None:
                    break
        if number is not None and type(number) in _NUMBERS and number < least:  # a JSON number (not a bool)
            raise BadRequest(f"'{key}' must be at least {least} (got {number})", param=key)
