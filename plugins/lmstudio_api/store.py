"""Stateful ``/api/v1/chat``: each stored reply keeps its conversation so ``previous_response_id`` can continue it."""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Any


class ResponseStore:
    """The last ``limit`` conversations by response id (``resp_<hex>``), least recently used dropped first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    def get(self, response_id: str) -> list[dict[str, Any]] | None:
        messages = self._items.get(response_id)
        if messages is not None:
            self._items.move_to_end(response_id)
        return messages

    def put(self, messages: list[dict[str, Any]]) -> str | None:
        """Keep a conversation and return its new id (``None`` when nothing is kept)."""
        if self.limit <= 0:
            return None
        response_id = "resp_" + secrets.token_hex(24)
        self._items[response_id] = messages
        while len(self._items) > self.limit:
            self._items.popitem(last=False)
        return response_id

    def __len__(self) -> int:
        return len(self._items)
