"""Where a task's generated text comes from: the local model, an endpoint, a script.

Tasks that write text (Conifer's attempts, xFinder's outputs to read answers from,
MUSTARD's problems, SOAP's code) ask a `Generator` for the continuation of each
prompt. Three kinds answer the same call:

- `LocalGenerator`: a client's own causal LM, greedy and batched
  (`spry.generation`), so what fine-tuning changes shows in what it writes;
- `EndpointGenerator`: any OpenAI-compatible server (llama.cpp's, vLLM, Ollama, a
  hosted API): a stronger writer than a device holds, for data synthesis;
- `ScriptedGenerator`: a function of the prompt, for tests and fixed pipelines.

A task option names one (`make_generator`): "local", an http(s) URL of the server's
`/v1` root, or "module:function" for a scripted one.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .generation import generate

# Environment variables an endpoint's API key is read from, first set wins.
API_KEY_VARIABLES = ("SPRY_ENDPOINT_KEY", "OPENAI_API_KEY")


class Generator(Protocol):
    """Continuations of prompts, one string each, in order."""

    def __call__(
        self, prompts: Sequence[str], *, max_new_tokens: int
    ) -> list[str]: ...  # fmt: skip


@dataclass
class LocalGenerator:
    """Greedy continuations from a causal LM (and its tokenizer) in this process.

    With `chat`, each prompt goes in as one user turn of the tokenizer's chat
    template (when it has one), as an instruct model was tuned to read requests:
    asked in plain text, SmolLM2-135M-Instruct ended 7 of 12 answers at once,
    against 0 of 8 in its chat format.
    """

    model: Any
    tokenizer: Any
    batch_size: int = 16
    max_prompt_tokens: int = 0
    device: str = "cpu"
    chat: bool = False

    @property
    def chats(self) -> bool:
        """Whether prompts go through a chat template (asked, and there is one)."""
        return self.chat and bool(getattr(self.tokenizer, "chat_template", None))

    def __call__(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        if self.chats:
            prompts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for p in prompts
            ]
        return generate(
            self.model,
            self.tokenizer,
            list(prompts),
            max_new_tokens=max_new_tokens,
            batch_size=self.batch_size,
            max_prompt_tokens=self.max_prompt_tokens,
            device=self.device,
        )


class EndpointError(RuntimeError):
    """An OpenAI-compatible endpoint could not be reached or answered nonsense."""


@dataclass
class EndpointGenerator:
    """Continuations from an OpenAI-compatible server, at temperature 0.

    `url` is the API root (e.g. http://127.0.0.1:8080/v1). `chat` sends each prompt
    as one user message to `/chat/completions` (instruction-tuned servers that only
    speak chat); otherwise `/completions` continues the prompt as written, as the
    local generator does. The key, if the server wants one, comes from
    `SPRY_ENDPOINT_KEY` or `OPENAI_API_KEY`.
    """

    url: str
    model: str = "default"
    chat: bool = False
    timeout: float = 120.0
    retries: int = 2

    def __call__(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        return [self._one(prompt, max_new_tokens) for prompt in prompts]

    def _one(self, prompt: str, max_new_tokens: int) -> str:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
        }
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        reply = self._post("chat/completions" if self.chat else "completions", body)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] if self.chat else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(
                f"{self.url}: a reply without choices[0] text: {str(reply)[:200]}"
            ) from None
        return str(text or "")

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        address = f"{self.url.rstrip('/')}/{route}"
        headers = {"Content-Type": "application/json"}
        key = next((os.environ[v] for v in API_KEY_VARIABLES if os.environ.get(v)), "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(
            address, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:  # the server said no: say why
                detail = error.read().decode(errors="replace")[:300]
                raise EndpointError(f"{address}: HTTP {error.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if attempt == self.retries:
                    raise EndpointError(
                        f"{address} unreachable after {attempt + 1} tries: {error}"
                    ) from None
                time.sleep(0.5 * 2**attempt)
            except json.JSONDecodeError as error:
                raise EndpointError(f"{address}: not JSON: {error}") from None
        raise AssertionError("unreachable")


@dataclass
class ScriptedGenerator:
    """Continuations from a function of the prompt (and the token budget)."""

    write: Callable[[str], str]

    def __call__(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        return [self.write(prompt) for prompt in prompts]


def make_generator(
    spec: str,
    *,
    local: Callable[[], LocalGenerator] | None = None,
    model: str = "default",
    chat: bool = False,
) -> Generator:
    """The generator a task option names.

    "local": `local()` (the task's own model); "http://..." or "https://...": an
    OpenAI-compatible endpoint serving `model`; "package.module:function": a
    scripted generator calling that function on each prompt; a finished run's
    results folder: the causal LM that run trained (`trained_generator`). `chat`:
    an endpoint's chat API, a local model's chat template.
    """
    from .trained import is_run_folder

    spec = spec.strip()
    if spec == "local":
        if local is None:
            raise ValueError("no local model to generate with here")
        return dataclasses.replace(local(), chat=chat)
    if is_run_folder(spec):
        return dataclasses.replace(trained_generator(spec), chat=chat)
    if spec.startswith(("http://", "https://")):
        return EndpointGenerator(spec, model=model, chat=chat)
    module, colon, function = spec.partition(":")
    if (
        colon
        and function.isidentifier()
        and all(part.isidentifier() for part in module.split("."))
    ):
        try:
            write = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"generator {spec!r}: {error}") from None
        return ScriptedGenerator(write)
    raise ValueError(
        f"generator {spec!r}: expected 'local', an http(s):// URL of an "
        "OpenAI-compatible API root, 'module:function', or a finished run's "
        "results folder (config.json and final-weights.npz)"
    )


def check_generator_spec(spec: str, *, also: Sequence[str] = ()) -> None:
    """Refuse (ValueError) a spec `make_generator` cannot build, before any run.

    `also` names a task's own writers (MUSTARD's "templates"). A module:function
    is only checked for its shape here; importing it is left to the run.
    """
    spec = spec.strip()
    if spec in ("local", *also) or spec.startswith(("http://", "https://")):
        return
    from .trained import is_run_folder

    if is_run_folder(spec):
        return
    module, colon, function = spec.partition(":")
    if (
        colon
        and function.isidentifier()
        and all(part.isidentifier() for part in module.split("."))
    ):
        return
    named = ", ".join(repr(a) for a in ("local", *also))
    raise ValueError(
        f"{spec!r}: expected {named}, an http(s):// URL of an OpenAI-compatible "
        "API root, 'module:function', or a finished run's results folder"
    )


def trained_generator(
    run_dir: str, *, batch_size: int = 16, device: str = "cpu"
) -> LocalGenerator:
    """Greedy continuations from the causal LM the run at `run_dir` trained.

    The model is loaded once per process and folder (`_trained_lm`), so a task
    may ask for its generator every round: only a rewritten folder loads again.
    """
    folder = Path(run_dir).resolve()
    stamp = (folder / "final-weights.npz").stat().st_mtime_ns
    model, tokenizer = _trained_lm(str(folder), stamp, device)
    return LocalGenerator(model, tokenizer, batch_size=batch_size, device=device)


@functools.lru_cache(maxsize=2)
def _trained_lm(run_dir: str, stamp: int, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) the run at `run_dir` trained; `stamp` keys a rewrite."""
    from .trained import load_trained

    _, trainable = load_trained(run_dir, device)
    if getattr(trainable, "tokenizer", None) is None:
        raise ValueError(f"the run at {run_dir} trained no language model")
    trainable.model.eval()
    return trainable.model, trainable.tokenizer
