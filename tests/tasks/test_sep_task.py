"""The SEP task without Flower: the prompted CLIP, its engines, its evaluation.

A tiny offline CLIP (a 2-layer 32-wide ViT on 200 images a set, built into a
temporary $SPRY_CACHE) under the real locked all-MiniLM-L6-v2; 8 shots per
base class, 5 test images per class. The 2-round simulation is in
tests/integration/test_seed_tasks.py (slow).
"""

from __future__ import annotations

import pytest
import torch

from spry.config import ConfigError, RunConfig, default_values
from spry.engines import make_engine
from spry.engines.forward import directional_derivative
from spry.tasks import load_task
from spry.tasks.sep.classes import harmonic_mean
from spry.training import train_slice
from spry.vision.images import FASHION_MNIST_DIR

pytestmark = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"needs Debian's dataset-fashion-mnist ({FASHION_MNIST_DIR} is missing): "
    "apt-get install --no-install-recommends dataset-fashion-mnist",
)

TINY = {
    "sep.clip-epochs": 1,
    "sep.clip-max-train": 200,
    "sep.clip-width": 32,
    "sep.clip-depth": 2,
    "sep.clip-heads": 2,
    "sep.clip-patch": 7,
    "sep.shots": 8,
    "sep.test-per-class": 5,
    "sep.tfm-hidden": 16,
}


def _task(**extra):
    cfg = RunConfig.from_run_config(
        {
            **default_values(),
            "task": "sep",
            "num-clients": 4,
            "clients-per-round": 2,
            "eval-clients-per-round": 2,
            "batch-size": 4,
            **TINY,
            **extra,
        }
    )
    return load_task(cfg)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPRY_CACHE", str(tmp_path_factory.mktemp("spry-cache")))
        yield


@pytest.fixture(scope="module")
def task(cache):
    return _task()


@pytest.fixture(scope="module")
def coop(cache):
    return _task(**{"sep.method": "coop"})


def _batch(task, trainable):
    return next(iter(task.train_batches(trainable, 0, 1, 0)))


def _is_prompt_or_tfm(name: str) -> bool:
    return name in ("text_prompts", "visual_prompts") or name.startswith(
        ("text_fusion.", "visual_fusion.")
    )


def test_only_prompts_and_one_tfm_per_layer_train(task, coop):
    # Prepare
    sep_model, coop_model = task.model(), coop.model()
    # Assert: SEP's prompts and TFMs before every layer but the first of each tower
    names = set(sep_model.names)
    assert all(_is_prompt_or_tfm(n) for n in names)
    layers = {n.split(".")[0] + "." + n.split(".")[1] for n in names if "fusion" in n}
    assert layers == {f"text_fusion.{i}" for i in range(5)} | {"visual_fusion.0"}
    assert sep_model.model.text_prompts.shape == (4, 384)  # "a photo of a"
    assert sep_model.model.visual_prompts.shape == (4, 32)
    assert set(coop_model.names) == {"text_prompts"}  # CoOp: the context alone
    for trainable in (sep_model, coop_model):
        assert not any(p.requires_grad for p in trainable.model.clip.parameters())


def test_forward_mode_tangents_reach_only_prompts_and_tfms(task):
    # Prepare: the project's forward-mode pass (fused rules, frozen linears) with
    # a tangent on every trainable tensor and on nothing else
    trainable = task.model()
    batch = _batch(task, trainable)
    params = dict(trainable.parameters())
    generator = torch.Generator().manual_seed(0)
    tangents = {n: torch.randn(p.shape, generator=generator) for n, p in params.items()}
    # Execute
    loss, derivative, logits = directional_derivative(
        trainable.model, task.loss, batch, params, tangents
    )
    # Assert: it equals backprop's gradient along the same tangent
    model = trainable.model
    model.zero_grad(set_to_none=True)
    reference, _ = task.loss(model, batch)
    reference.backward()
    expected = sum((params[n].grad * tangents[n]).sum() for n in params)
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-5, atol=1e-6)
    assert float(derivative) == pytest.approx(float(expected), rel=1e-3, abs=1e-5)
    assert logits.shape == (len(batch["labels"]), 10)
    # and backprop's gradients: on every prompt and TFM tensor, on no CLIP tensor
    assert all(params[n].grad is not None for n in params)
    assert params["text_prompts"].grad.abs().sum() > 0
    assert params["visual_prompts"].grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip.parameters())
    model.zero_grad(set_to_none=True)


def test_a_forward_step_changes_only_prompts_and_tfms(task):
    # Prepare
    trainable = task.model()
    before = {k: v.clone() for k, v in trainable.model.state_dict().items()}
    engine = make_engine("forward", num_tangents=2)
    # Execute: one Spry client's local step over all trainable tensors
    report = train_slice(
        trainable,
        list(trainable.names),
        lambda epoch: [_batch(task, trainable)],
        loss=task.loss,
        engine=engine,
        cfg=task.run.client,
        seed=0,
        server_round=1,
        partition_id=0,
    )
    # Assert
    after = trainable.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert report.steps == 1
    assert "text_prompts" in changed and "visual_prompts" in changed
    assert all(_is_prompt_or_tfm(k) for k in changed)
    assert not any(k.startswith("clip.") for k in changed)


def test_evaluate_scores_base_and_new_each_among_its_own(task):
    # Prepare
    trainable = task.model()
    # Execute
    central = task.evaluate(trainable, task.test_data())
    client = task.evaluate(trainable, task.partition(0).held_out)
    # Assert: 5 images per class of all 20; clients hold base classes only
    assert central["num-examples"] == 100
    assert central["accuracy"] == central["base-accuracy"]
    assert central["harmonic-mean"] == pytest.approx(
        harmonic_mean(central["base-accuracy"], central["new-accuracy"])
    )
    for key in ("base-accuracy", "new-accuracy", "harmonic-mean"):
        assert 0.0 <= central[key] <= 1.0
    assert "new-accuracy" not in client
    assert set(task.dataset.train["label"]) == set(task.dataset.split.base)


def test_clients_hold_different_base_classes(task):
    labels = [set(task.partition(c).train["label"]) for c in range(4)]
    assert all(s <= set(task.dataset.split.base) for s in labels)
    assert sum(len(task.partition(c).train) + len(task.partition(c).held_out)
               for c in range(4)) == 80  # 8 shots x 10 base classes  # fmt: skip
    assert len({frozenset(s) for s in labels}) > 1  # Dirichlet: mixes differ


def test_coop_scores_the_frozen_image_features(coop):
    trainable = coop.model()
    images = _batch(coop, trainable)["images"]
    model = trainable.model
    with torch.no_grad():
        torch.testing.assert_close(
            model.image_features(images), model.clip.image_features(images)
        )


def test_options_are_checked(cache):
    with pytest.raises(ConfigError, match="method"):
        _task(**{"sep.method": "maple"})
    with pytest.raises(ConfigError, match="selection"):
        _task(**{"sep.selection": "random"})
    with pytest.raises(ConfigError, match="visual-prompts"):
        _task(**{"sep.visual-prompts": 0})


def test_finish_writes_zero_shot_and_final_scores(task, tmp_path):
    # Prepare: "trained" prompts, and the history the server's evaluations keep
    trainable = task.model()
    zero_shot = task.evaluate(trainable, task.test_data())
    with torch.no_grad():
        trainable.model.text_prompts.add_(1.0)
    moved = trainable.state()
    # Execute
    notes = task.finish(trainable, tmp_path)["sep"]
    # Assert: round 0 is the initial prompts' score, the final the moved ones'
    written = __import__("json").loads((tmp_path / "sep.json").read_text())
    assert written["zero-shot"]["harmonic-mean"] == zero_shot["harmonic-mean"]
    assert notes["final"] == written["final"]
    assert written["evaluations"][-1] == zero_shot
    assert written["test-images"] == 100 and written["train-images"] == 80
    # finish leaves the final prompts in the model
    assert (trainable.state()["text_prompts"] == moved["text_prompts"]).all()


def _residual_only(tfm) -> None:
    """Mixes at 1: a TFM then returns exactly the tokens it selected."""
    with torch.no_grad():
        tfm.mix_attention.fill_(1.0)
        tfm.mix_mlp.fill_(1.0)


def test_text_layers_fuse_the_tokens_after_the_prompts(task):
    # Prepare: a hand-made layer input, 2 classes, 12 tokens, K = 4 prompts
    model = task.model().model
    _residual_only(model.text_fusion[0])
    hidden = torch.randn(2, 12, 384)
    attention = torch.ones(2, 12, dtype=torch.long)
    # Execute
    with torch.no_grad():
        out = model._fuse_text(1, hidden, attention)
    # Assert: the prompts' places now hold the 4 tokens right after them (the
    # class name's), every other token is as it was
    assert out.shape == hidden.shape
    torch.testing.assert_close(out[:, 1:5], hidden[:, 5:9])
    torch.testing.assert_close(out[:, :1], hidden[:, :1])
    torch.testing.assert_close(out[:, 5:], hidden[:, 5:])


def test_image_blocks_fuse_each_images_highest_energy_tokens(task):
    # Prepare: 1 CLS + 16 patches + 4 prompts; image 0's strongest tokens are
    # 3, 7, 11, 15 (in that order), image 1's are 0, 2, 4, 6
    model = task.model().model
    _residual_only(model.visual_fusion[0])
    tokens = torch.randn(2, 17 + 4, 32) * 0.1
    for rank, (t0, t1) in enumerate(zip((3, 7, 11, 15), (0, 2, 4, 6), strict=True)):
        tokens[0, t0] = 10.0 - rank
        tokens[1, t1] = -(10.0 - rank)
    # Execute
    with torch.no_grad():
        out = model._fuse_image(1, tokens, pretrained=17)
    # Assert: per image, the prompts are replaced by its own top-4 tokens
    torch.testing.assert_close(out[0, 17:], tokens[0, [3, 7, 11, 15]])
    torch.testing.assert_close(out[1, 17:], tokens[1, [0, 2, 4, 6]])
    torch.testing.assert_close(out[:, :17], tokens[:, :17])
