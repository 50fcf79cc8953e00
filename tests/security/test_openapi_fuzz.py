"""Schemathesis against the main port's OpenAPI document: every operation gets a few generated requests (valid ones
and, for the ``/v1`` bodies the document describes, deliberately wrong ones); none may answer with a 5xx.

Bounded: a handful of examples per operation, no shrinking phase, so the whole run takes seconds.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from llama_host.testing import serve_host
from security_kit import site

#: Streams that never end on their own (the live event stream; a model's live log) are not fuzzed.
ENDLESS = r"/api/v1/events$|/logs/stream$"


@pytest.fixture(scope="module")
def openapi(tmp_path_factory):
    with serve_host(site(tmp_path_factory.mktemp("fuzz"))) as rh:
        schema = schemathesis.openapi.from_url(rh.url() + "/api/docs/openapi.json")
        yield schema.exclude(path_regex=ENDLESS)


EXAMPLES = 4


def test_no_operation_answers_5xx(openapi):
    """Valid and invalid requests for every operation (schemathesis's pytest plugin does not run under pytest 9:
    the operations are driven through their Hypothesis strategies here)."""
    failures: list[str] = []
    session = requests.Session()  # kept alive: a connection per request would cost more than the request
    operations = [result.ok() for result in openapi.get_all_operations()]
    assert len(operations) > 15
    for operation in operations:
        # Wrong requests for the operations that take a body (wrong path strings cannot be made: a search for them
        # only burns time).
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if len(operation.body) else (GenerationMode.POSITIVE,)
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def run(case):
                response = case.call(session=session, timeout=30)
                if response.status_code >= 500 and response.status_code != 501:
                    failures.append(f"{case.method} {case.formatted_path} {mode.value} → {response.status_code}: "
                                    f"{response.text[:300]}")

            try:
                run()
            except Unsatisfiable:  # nothing to get wrong (an operation without parameters or body): no negative case
                assert mode is GenerationMode.NEGATIVE
    assert not failures, "\n".join(sorted(set(failures)))


def test_the_v1_bodies_are_described(openapi):
    """The fuzzer reaches the relaying handlers with bodies: the document says what they take."""
    paths = openapi.raw_schema["paths"]
    for path, required in (("/v1/chat/completions", {"model", "messages"}), ("/v1/completions", {"model", "prompt"}),
                           ("/v1/embeddings", {"model", "input"}), ("/v1/rerank", {"model", "query", "documents"})):
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        assert set(body["content"]["application/json"]["schema"]["required"]) == required, path
