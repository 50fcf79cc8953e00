"""Fixtures of the security suite: the real host with every installed plugin on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from security_kit import KEY, site

from llama_host.testing import RunningHost, serve_host


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Iterator[RunningHost]:
    """The host with ``api_keys`` set."""
    with serve_host(site(tmp_path_factory.mktemp("keyed"), api_keys=[KEY])) as rh:
        yield rh


@pytest.fixture(scope="module")
def open_host(tmp_path_factory) -> Iterator[RunningHost]:
    """The host with the default site file: no keys."""
    with serve_host(site(tmp_path_factory.mktemp("open"))) as rh:
        yield rh
