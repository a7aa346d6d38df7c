"""Prompt-based classification (MeZO's style) on a causal LM, LoRA only.

Most checks run on a tiny random Llama with a word-level tokenizer built in memory
(no hub, no weights): the label-word scores against the model's own full logits,
the loss and the metrics against a hand computation, truncation, the options'
errors, every gradient engine. The forward-mode check (the jvp through the task's
loss equals backprop's gradient dotted with the tangent) runs on the real offline
SmolLM2-135M with LoRA in float32.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from typing import ClassVar

import datasets
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import LlamaConfig, PreTrainedTokenizerFast

from spry.class_metrics import class_scores, confusion
from spry.config import ConfigError, RunConfig, default_values
from spry.data.sources import TextDataset
from spry.engines import ENGINES
from spry.models.causal_lm import build_causal_lm
from spry.tasks.base import build_options
from spry.tasks.lm_classification import LMClassificationTask
from spry.tasks.registry import get
from spry.training import make_client_engine, train_slice

WORDS = (
    "Review Sentiment : . the film is a good bad dull fun plot very movie with "
    "negative positive great awful neutral ham spam"
).split()
TEXTS = [
    "the film is good",
    "a dull plot",
    "very fun . a good movie with a very good plot",
    "bad",
    "the movie is very bad . dull dull dull",
    "fun fun",
]
LABELS = [1, 0, 1, 0, 0, 1]


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )


def sentences(label_names=("negative", "positive")) -> TextDataset:
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(label_names)),
        }
    )
    rows = datasets.Dataset.from_dict(
        {"text": TEXTS, "label": LABELS}, features=features
    )
    return TextDataset(train=rows, test=rows, label_names=tuple(label_names))


class TinyLMClassification(LMClassificationTask):
    """The task on a random 2-layer Llama and six sentences held in memory."""

    label_names: ClassVar[tuple[str, ...]] = ("negative", "positive")

    @property
    def dataset(self) -> TextDataset:
        return sentences(self.label_names)

    def language_model(self, device: str):
        config = LlamaConfig(
            vocab_size=len(WORDS) + 3, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        )  # fmt: skip
        trainable = build_causal_lm(
            random_weights=config,
            seed=self.run.runtime.seed,
            device=device,
            dtype=self.run.model.frozen_dtype,
        )
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # LoRA B starts at zero: make the adapters matter
            for p in trainable.parameters().values():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        return dataclasses.replace(trainable, tokenizer=word_tokenizer())


def make_task(
    cls: type[LMClassificationTask] = TinyLMClassification,
    max_length: int = 64,
    run: dict[str, str] | None = None,
    **options: str,
) -> LMClassificationTask:
    values = {**default_values(), **cls.run_defaults, "max-length": max_length}
    values.update({"task": "lm-classification", **(run or {})})
    return cls(RunConfig.from_run_config(values), build_options(cls, options))


def hand_scores(task, trainable, texts):
    """Each prompt alone (no padding) through the model's own forward: the full
    vocabulary's logits at its last token, then the label words' columns."""
    tok = trainable.tokenizer
    rows = []
    with torch.no_grad():
        for text in texts:
            prompt = task.template.fill(text)
            ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
            logits = trainable.model(input_ids=ids).logits  # (1, T, V)
            words = tok.convert_tokens_to_ids(["negative", "positive"])
            rows.append(logits[0, -1, words])
    return torch.stack(rows)  # (N, 2)


# -- label-word scoring against a hand computation ---------------------------------


def test_label_word_scores_equal_the_full_logits_at_the_last_prompt_token():
    task = make_task()
    trainable = task.model()
    tok = trainable.tokenizer
    assert task.label_ids.tolist() == [tok.convert_tokens_to_ids(w)
                                       for w in ("negative", "positive")]  # fmt: skip
    batch = next(task.batches(trainable, task.test_data(), batch_size=6))
    assert (batch["attention_mask"] == 0).any()  # right padding is exercised
    with torch.no_grad():
        loss, logits = task.loss(trainable.model, batch)
    expected = hand_scores(task, trainable, TEXTS)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    # cross-entropy over the two words, by hand
    terms = [
        math.log(sum(math.exp(v) for v in row.tolist())) - row[label].item()
        for row, label in zip(expected, LABELS, strict=True)
    ]
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_evaluation_scores_the_most_likely_label_word():
    task = make_task()
    trainable = task.model()
    scores = task.evaluate(trainable, task.test_data())
    expected = hand_scores(task, trainable, TEXTS)
    predicted = expected.argmax(-1).numpy()
    matrix = confusion(LABELS, predicted, 2)
    terms = torch.nn.functional.cross_entropy(
        expected, torch.tensor(LABELS), reduction="none"
    )
    assert scores["num-examples"] == 6
    assert scores["accuracy"] == pytest.approx(np.mean(predicted == LABELS))
    assert scores["loss"] == pytest.approx(float(terms.mean()), rel=1e-5)
    for key, value in class_scores(matrix).items():
        assert scores[key] == pytest.approx(value)
    assert task.evaluate(trainable, task.test_data().select([]))["num-examples"] == 0
    assert task.reference_metrics() == {"majority-rate": 0.5}


def test_bfloat16_frozen_weights_give_float32_scores_near_the_float32_ones():
    rows = sentences().test
    scores = {}
    for dtype in ("float32", "bfloat16"):
        task = make_task(run={"frozen-dtype": dtype})
        trainable = task.model()
        batch = next(task.batches(trainable, rows, batch_size=6))
        loss, logits = task.loss(trainable.model, batch)
        assert logits.dtype == torch.float32
        loss.backward()  # LoRA stays float32 and gets a gradient
        grads = [p.grad for p in trainable.parameters().values()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        scores[dtype] = logits.detach()
    torch.testing.assert_close(
        scores["bfloat16"], scores["float32"], rtol=0.05, atol=0.05
    )


# -- prompts: the template's tail survives truncation --------------------------------


def test_a_prompt_that_fits_is_the_whole_prompt_tokenized():
    task = make_task()
    tok = word_tokenizer()
    [ids] = task.template.token_ids(tok, [TEXTS[2]], max_length=64)
    whole = tok(task.template.fill(TEXTS[2]), add_special_tokens=False)
    assert ids == whole["input_ids"]


def test_truncation_drops_the_start_of_the_text_and_keeps_the_template():
    task = make_task(max_length=7)  # "Review :" + 3 text words + "Sentiment :"
    trainable = task.model()
    tok = trainable.tokenizer
    batch = next(task.batches(trainable, task.test_data(), batch_size=6))
    assert batch["input_ids"].shape[1] == 7
    long = batch["input_ids"][2].tolist()  # 12 words of text: the last 3 stay
    assert tok.convert_ids_to_tokens(long) == [
        "Review", ":", "very", "good", "plot", "Sentiment", ":"
    ]  # fmt: skip
    short = batch["input_ids"][3][batch["attention_mask"][3] == 1].tolist()
    assert tok.convert_ids_to_tokens(short) == [
        "Review", ":", "bad", "Sentiment", ":"
    ]  # fmt: skip
    # With no room for any text, the template's end (the cue) is what stays.
    tiny = make_task(max_length=3).template.token_ids(tok, ["fun"], max_length=3)
    assert tok.convert_ids_to_tokens(tiny[0]) == [":", "Sentiment", ":"]


def test_a_written_backslash_n_is_a_newline():
    task = make_task(template="Review: {text}\\nSentiment:")
    assert task.template.tail == "\nSentiment:"


# -- options and their one-line errors ---------------------------------------------


def test_a_template_without_the_text_slot_fails_naming_it():
    with pytest.raises(ConfigError, match=r"lm-classification.*\{text\}"):
        make_task(template="Sentiment:")
    with pytest.raises(ConfigError, match="exactly once"):
        make_task(template="{text} {text}")


def test_the_number_of_label_words_must_match_the_classes():
    task = make_task(**{"label-words": "bad,neutral,good"})
    with pytest.raises(ConfigError) as error:
        task.model()
    message = str(error.value)
    assert "3 words" in message and "2 classes" in message and "\n" not in message


def test_label_words_sharing_a_first_token_fail_naming_them():
    task = make_task(**{"label-words": "very bad,very good"})
    with pytest.raises(ConfigError, match=r"'very bad', 'very good'.*first token"):
        task.model()
    # Both unknown to the tokenizer: both would be scored as [UNK].
    task = make_task(**{"label-words": "terrible,superb"})
    with pytest.raises(ConfigError, match="first token"):
        task.model()


def test_label_words_default_to_the_class_names_and_can_be_given():
    assert make_task().label_words() == ("negative", "positive")
    task = make_task(**{"label-words": " bad , good"})
    assert task.label_words() == ("bad", "good")
    tok = word_tokenizer()
    assert task.model() and task.label_ids.tolist() == tok.convert_tokens_to_ids(
        ["bad", "good"]
    )
    with pytest.raises(ConfigError, match="differ"):
        make_task(**{"label-words": "good,good"})


def test_a_labelled_file_of_the_users_gives_the_classes_and_words(tmp_path):
    """`--dataset` a CSV with string labels: the class names are the words."""

    class OnFile(TinyLMClassification):
        dataset = LMClassificationTask.dataset  # the run's `dataset`, read for real

    texts = ["the film is good", "bad plot", "a dull movie", "very fun"] * 5
    lines = ["message,kind"] + [
        f"{t},{'spam' if i % 2 else 'ham'}" for i, t in enumerate(texts)
    ]
    (tmp_path / "mail.csv").write_text("\n".join(lines) + "\n")
    run = {
        "dataset": str(tmp_path / "mail.csv"),
        "text-column": "message",
        "label-column": "kind",
        "num-clients": "3",
        "clients-per-round": "3",
        "eval-clients-per-round": "3",
    }
    task = make_task(OnFile, run=run)
    assert task.label_words() == ("ham", "spam")
    trainable = task.model()
    assert task.label_ids.tolist() == word_tokenizer().convert_tokens_to_ids(
        ["ham", "spam"]
    )
    scores = task.evaluate(trainable, task.test_data())
    assert scores["num-examples"] == 2 and "macro-f1" in scores  # 10% of 20
    client = task.partition(0)
    assert len(client.train) + len(client.held_out) > 0


def test_the_task_is_registered_with_its_defaults():
    assert get("lm-classification") is LMClassificationTask
    defaults = LMClassificationTask.run_defaults
    assert defaults["model"] == "SmolLM2-135M-Instruct"
    assert defaults["lora-targets"] == "q_proj,v_proj"


# -- every engine differentiates the task's loss -------------------------------------


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_trains_the_lora_tensors(engine):
    values = {**default_values(), **TinyLMClassification.run_defaults}
    run = RunConfig.from_run_config({**values, "engine": engine, "batch-size": 3})
    task = TinyLMClassification(run, build_options(TinyLMClassification, {}))
    trainable = task.model()
    names = list(trainable.names)
    before = {n: a.copy() for n, a in trainable.state().items()}
    report = train_slice(
        trainable,
        names,
        lambda epoch: task.batches(trainable, task.test_data(), batch_size=3),
        loss=task.loss,
        engine=make_client_engine(run.client),
        cfg=run.client,
        seed=0,
        server_round=1,
        partition_id=0,
    )
    assert report.steps == 2 and math.isfinite(report.mean_loss)
    after = trainable.state()
    assert any(not np.array_equal(before[n], after[n]) for n in names)


def test_the_memory_probe_is_a_full_length_batch():
    task = make_task(max_length=12)
    task.model()
    probe_task = make_task(max_length=12)  # as in a fresh process: words handed over
    trainable, batch = probe_task.probe_inputs("cpu", task.probe_context())
    assert batch["input_ids"].shape == (task.run.client.batch_size, 12)
    assert batch["attention_mask"].all()
    assert torch.equal(probe_task.label_ids, task.label_ids)
    with torch.no_grad():
        loss, logits = probe_task.loss(trainable.model, batch)
    assert logits.shape == (task.run.client.batch_size, 2) and loss > 0


# -- forward mode on the real model ------------------------------------------------


class LossOf(nn.Module):
    """The task's loss as a module, so `functional_call` can swap LoRA tensors."""

    def __init__(self, task: LMClassificationTask, model: nn.Module) -> None:
        super().__init__()
        self.task, self.model = task, model

    def forward(self, batch):
        return self.task.loss(self.model, batch)[0]


@pytest.mark.slow  # about 15 s alone, 50 s on two busy cores
def test_jvp_of_the_loss_equals_backprop_dotted_with_the_tangent_on_smollm2():
    """SmolLM2-135M, LoRA r=1 on q and v (120 tensors), float32, a padded batch
    of four Rotten Tomatoes test prompts: torch.func.jvp against torch.autograd."""
    task = make_task(LMClassificationTask)
    assert task.run.model.model == "SmolLM2-135M-Instruct"
    trainable = task.model()
    rows = task.dataset.test.select(range(4))
    batch = next(task.batches(trainable, rows, batch_size=4))
    assert (batch["attention_mask"] == 0).any()
    params = {trainable.own_name(n): p for n, p in trainable.parameters().items()}
    assert len(params) == 120
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero (so A's gradient too): move it
        for name, p in params.items():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    tangent = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    wrapped = LossOf(task, trainable.model)

    def loss_at(values):
        named = {f"model.{n}": v for n, v in values.items()}
        return torch.func.functional_call(wrapped, named, (batch,))

    primals = {n: p.detach() for n, p in params.items()}
    value, derivative = torch.func.jvp(loss_at, (primals,), (tangent,))

    loss = wrapped(batch)
    grads = dict(
        zip(params, torch.autograd.grad(loss, list(params.values())), strict=True)
    )
    expected = sum((grads[n] * tangent[n]).sum() for n in params)
    assert sum(int(g.abs().sum() > 0) for g in grads.values()) == 120
    torch.testing.assert_close(value, loss.detach(), rtol=1e-6, atol=1e-6)
    assert float(derivative) == pytest.approx(float(expected), rel=1e-4)


# -- end to end in Flower's simulation engine ----------------------------------------


@pytest.mark.slow  # a simulation (Ray) with SmolLM2: about two minutes
def test_one_round_through_the_simulation_engine(tmp_path):
    from tests.integration.runs import run_spry

    run_dir = run_spry(
        tmp_path, "--task", "lm-classification", "--rounds", "1",
        "--clients", "2", "--per-round", "2",
        "--set", "eval-clients-per-round=2", "--set", "max-train-examples=48",
        "--set", "max-test-examples=32",
    )  # fmt: skip
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1"]
    for row in rows:  # zero-shot, then after one round: every score reported
        for key in ("test-accuracy", "test-macro-f1", "test-balanced-accuracy"):
            assert 0 <= float(row[key]) <= 1, (key, row)
    assert float(rows[1]["train-loss"]) > 0 and rows[1]["clients"] == "2"
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["model"] == "SmolLM2-135M-Instruct"
    assert config["lora-fa"] is True  # the task's tuned Spry setting (method_defaults)
    weights = np.load(run_dir / "final-weights.npz")
    # LoRA-FA freezes A: B of q and v in each of the 30 layers is all that trains
    assert len(weights.files) == 60
    assert all(n.endswith("lora_B.weight") for n in weights.files)
