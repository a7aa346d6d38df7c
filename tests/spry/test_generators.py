"""Generators: the local model, a scripted function, an endpoint's failures named."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from typing import Any, ClassVar

import pytest

from spry.config import ConfigError
from spry.generation import generate
from spry.generators import (
    EndpointError,
    EndpointGenerator,
    LocalGenerator,
    ScriptedGenerator,
    check_generator_spec,
    make_generator,
)
from spry.models.causal_lm import build_causal_lm
from spry.trained import load_trained
from tests.helpers import tiny_llama
from tests.tasks.test_causal_lm_task import WORDS, word_tokenizer


def shout(prompt: str) -> str:
    return prompt.upper()


def test_a_scripted_generator_is_named_by_module_and_function():
    writer = make_generator(f"{__name__}:shout")
    assert isinstance(writer, ScriptedGenerator)
    assert writer(["ab", "c"], max_new_tokens=4) == ["AB", "C"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("tests.spry.test_generators:nothing_here", "nothing_here"),
        ("no_such_module_here:f", "no_such_module_here"),
        ("ftp://host/v1", "expected 'local'"),
        ("local", "no local model"),
    ],
)
def test_a_bad_generator_spec_is_refused_with_its_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        make_generator(spec)


def test_a_folder_that_is_not_a_finished_run_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # no final-weights.npz: unfinished
    with pytest.raises(ValueError, match="results folder"):
        make_generator(str(tmp_path))
    with pytest.raises(ConfigError, match="final-weights.npz"):
        load_trained(tmp_path)


def test_the_local_generator_writes_what_greedy_generation_writes():
    trainable = build_causal_lm(random_weights=tiny_llama(len(WORDS) + 3), seed=0)
    tokenizer = word_tokenizer()
    prompts = [" ".join(WORDS[:3]), " ".join(WORDS[2:4])]
    writer = make_generator(
        "local", local=lambda: LocalGenerator(trainable.model, tokenizer, batch_size=1)
    )
    expected = generate(trainable.model, tokenizer, prompts, max_new_tokens=5)
    assert writer(prompts, max_new_tokens=5) == expected
    assert any(text for text in expected)  # it wrote something to compare


def test_chat_asks_through_the_tokenizers_template_when_it_has_one():
    trainable = build_causal_lm(random_weights=tiny_llama(len(WORDS) + 3), seed=0)
    tokenizer = word_tokenizer()
    prompts = [" ".join(WORDS[:3])]

    def local() -> LocalGenerator:
        return LocalGenerator(trainable.model, tokenizer, batch_size=1)

    # no template: chat changes nothing
    plain = generate(trainable.model, tokenizer, prompts, max_new_tokens=4)
    writer = make_generator("local", local=local, chat=True)
    assert writer(prompts, max_new_tokens=4) == plain

    # a template: the prompt goes in as a user turn, the reply's opening after it
    tokenizer.chat_template = (
        "{% for m in messages %}" + WORDS[5] + " {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}" + WORDS[6] + "{% endif %}"
    )
    writer = make_generator("local", local=local, chat=True)
    assert writer.chats and not local().chats
    turned = f"{WORDS[5]} {prompts[0]} {WORDS[6]}"
    expected = generate(trainable.model, tokenizer, [turned], max_new_tokens=4)
    assert writer(prompts, max_new_tokens=4) == expected


@pytest.mark.parametrize(
    "spec, also, ok",
    [
        ("local", (), True),
        ("https://api.example/v1", (), True),
        ("pkg.mod:fn", (), True),
        ("templates", ("templates",), True),
        ("templates", (), False),
        ("not a spec", (), False),
        ("mod:", (), False),
    ],
)
def test_a_generator_spec_is_checked_before_any_run(spec, also, ok):
    if ok:
        check_generator_spec(spec, also=also)
    else:
        with pytest.raises(ValueError, match="expected 'local'"):
            check_generator_spec(spec, also=also)


def test_an_unreachable_endpoint_fails_with_its_address():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    writer = make_generator(url, model="m")
    assert isinstance(writer, EndpointGenerator)
    writer.retries = 0
    with pytest.raises(EndpointError, match=f"127.0.0.1:{port}/v1/completions"):
        writer(["hello"], max_new_tokens=2)


# -- a real HTTP server speaking the OpenAI API ---------------------------------------


class _OpenAIShaped(http.server.BaseHTTPRequestHandler):
    """Answers /v1/completions and /v1/chat/completions; remembers each request."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:  # noqa: N802  (the http.server name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), **body}
        )
        if body.get("model") == "refuse":
            self.send_response(429)
            self.end_headers()
            self.wfile.write(b"slow down")
            return
        if self.path.endswith("/chat/completions"):
            said = body["messages"][-1]["content"]
            reply = {
                "choices": [{"message": {"role": "assistant", "content": said[::-1]}}]
            }
        else:
            reply = {"choices": [{"text": body["prompt"].upper()}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def openai_server():
    _OpenAIShaped.seen.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIShaped)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_endpoint_asks_greedy_completions_and_chat_with_the_key(
    openai_server, monkeypatch
):
    monkeypatch.setenv("SPRY_ENDPOINT_KEY", "k-123")
    plain = make_generator(openai_server, model="tiny")
    assert plain(["ab", "cd"], max_new_tokens=7) == ["AB", "CD"]
    chat = make_generator(openai_server, model="tiny", chat=True)
    assert chat(["abc"], max_new_tokens=3) == ["cba"]

    first, _, third = _OpenAIShaped.seen
    assert (
        first["path"] == "/v1/completions" and third["path"] == "/v1/chat/completions"
    )
    assert first["auth"] == "Bearer k-123"
    assert (first["model"], first["max_tokens"], first["temperature"]) == (
        "tiny",
        7,
        0.0,
    )
    assert third["messages"] == [{"role": "user", "content": "abc"}]


def test_an_endpoints_refusal_is_named_with_its_status(openai_server):
    writer = make_generator(openai_server, model="refuse")
    with pytest.raises(EndpointError, match="HTTP 429: slow down"):
        writer(["x"], max_new_tokens=1)
