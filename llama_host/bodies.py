"""Client request bodies, decided once for every surface: hostile JSON becomes a ``BadRequest`` (a 4xx in the
surface's dialect), never a 500 and never a traceback in the log.

Refused: invalid JSON or UTF-8, nesting deeper than ``MAX_DEPTH``, numbers out of range (``1e400``), values of the
wrong type for the surface's typed view, and negative values in the count fields a surface names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, overload

import msgspec

from llama_host.errors import BadRequest

#: Deepest nesting of arrays and objects a request body may have. Real requests (chat with tools and JSON schemas)
#: stay far below; a limit well under Python's recursion limit keeps every later walk of the value safe too.
MAX_DEPTH = 64

T = TypeVar("T")
_decode_any = msgspec.json.Decoder().decode


@overload
def decode_json(raw: bytes, type: None = None, *, nonnegative: Iterable[str] = ()) -> Any: ...


@overload
def decode_json(raw: bytes, type: type[T], *, nonnegative: Iterable[str] = ()) -> T: ...


def decode_json(raw: bytes, type: Any = None, *, nonnegative: Iterable[str] = ()) -> Any:
    """Decode a client's JSON body (as ``type`` when given, else as plain JSON values).

    :param raw: the body bytes.
    :param type: a msgspec-convertible type (a request Struct) or ``None`` for any JSON value.
    :param nonnegative: top-level keys whose numbers must not be negative (``max_tokens``, ``n``...).
    :raises BadRequest: with a message fit for the client.
    """
    if not raw.strip():
        raise BadRequest("the request body is empty")
    try:
        value = _decode_any(raw) if type is None else msgspec.json.decode(raw, type=type)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"the request body is nested more than {MAX_DEPTH} levels deep") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:  # only then can the value be too deep: most bodies skip the walk
        _check_depth(value if type is None else msgspec.to_builtins(value))
    if nonnegative:
        _check_nonnegative(value, nonnegative)
    return value


def _check_depth(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"the request body is nested more than {MAX_DEPTH} levels deep")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def _check_nonnegative(value: Any, keys: Iterable[str]) -> None:
    get = value.get if isinstance(value, dict) else lambda k: getattr(value, k, None)
    for key in keys:
        number = get(key)
        if isinstance(number, int | float) and not isinstance(number, bool) and number < 0:
            raise BadRequest(f"'{key}' must not be negative (got {number})", param=key)
