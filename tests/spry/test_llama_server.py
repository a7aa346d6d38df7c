"""A real OpenAI-compatible server: llama.cpp's, on the offline SmolLM2 GGUF.

The `llama-server` extra (an sdist that compiles llama.cpp) is optional, so these
tests skip without it. They check what the scripted HTTP server in
test_generators.py cannot: that a real server's completions and chat replies read
back through `EndpointGenerator`, greedy and repeatable, and that a task takes
its text from one through its `generator` option.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from spry.generators import EndpointGenerator, make_generator
from spry.models.causal_lm import DEFAULT_CAUSAL_LM, offline_gguf

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("sse_starlette") is None,
    reason="the llama-server extra is not installed (pip install -e '.[llama-server]')",
)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """The server on a free loopback port, one thread; its API root."""
    folder, name = offline_gguf(DEFAULT_CAUSAL_LM)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model",
             str(Path(folder) / name), "--host", "127.0.0.1", "--port", str(port),
             "--n_ctx", "1024", "--n_threads", "1", "--model_alias", "smollm2"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            if server.poll() is not None:
                pytest.fail(f"the server exited: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"the server did not answer in 60 s: {log.read_text()[-2000:]}")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_completions_and_chat_read_back_greedy_and_repeatable(llama_server):
    plain = make_generator(llama_server, model="smollm2")
    assert isinstance(plain, EndpointGenerator)
    first = plain(["The capital of France is"], max_new_tokens=6)
    assert "Paris" in first[0]
    assert plain(["The capital of France is"], max_new_tokens=6) == first  # greedy

    chat = make_generator(llama_server, model="smollm2", chat=True)
    (reply,) = chat(["What is 2 + 3? Answer with the number only."], max_new_tokens=12)
    assert "5" in reply


def test_a_task_writes_its_items_through_the_server(llama_server, tmp_path):
    from tests.tasks.test_mustard import make_task

    task = make_task(tmp_path, generator=llama_server, items=3, **{
        "generator-model": "smollm2", "generate-tokens": 96,
    })  # fmt: skip
    records = task.records
    assert len(records) == 3
    assert all(r["text"].strip() for r in records)  # the server wrote each item
    assert all(r["reason"] for r in records)  # and each got a verdict
