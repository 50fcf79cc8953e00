"""After a runner dies, the next request gets a new runner (issue 13, item 6): the real llama-server on the tiny model,
SIGKILLed 50 times, each kill followed at once by a request over the keep-alive connection the relay holds to it."""

from __future__ import annotations

import os
import signal

import openai
import pytest

from llama_host.testing import serve_host, tiny_site

pytestmark = pytest.mark.real
KILLS = 50
HELLO = [{"role": "user", "content": "hello"}]


def test_each_request_after_a_sigkill_gets_a_new_runner(tiny_model, llama_server_bin):
    config = tiny_site(tiny_model, llama_server_bin)
    config["models"]["tiny"]["params"] = {"ctx_size": 128, "parallel": 1, "no_warmup": True}  # quick to start
    with serve_host(config, ["openai_api", "llama_server"]) as rh, \
            openai.OpenAI(base_url=rh.url() + "/v1", api_key="unused", max_retries=0, timeout=60) as client:

        def chat() -> None:
            reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
            assert reply.choices[0].finish_reason

        chat()
        failures: list[str] = []
        pids = [rh.host.scheduler.status("tiny").pid]
        for _ in range(KILLS):
            os.kill(pids[-1], signal.SIGKILL)
            try:
                chat()
            except openai.APIStatusError as exc:
                failures.append(f"{exc.status_code}: {exc.message}")
                chat()  # the one after gets a runner in any case
            pids.append(rh.host.scheduler.status("tiny").pid)
        assert failures == [], f"{len(failures)} of {KILLS} requests after a SIGKILL failed"
        assert len(set(pids)) == KILLS + 1 and None not in pids  # a new runner every time
