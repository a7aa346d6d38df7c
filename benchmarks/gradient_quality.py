"""How close is a round's assembled gradient estimate to the true global gradient.

Spry's central claim is that a forward gradient over a small slice of the weights is
a much closer estimate than one over all of them (its error grows like the square
root of the number of dimensions), so splitting the trainable tensors among a
round's clients beats plain forward-gradient FL (FedFGD). This probe measures that
directly, for one round, on the offline default: all-MiniLM-L6-v2 + LoRA r = 1 on
query/value + the classification head (26 trainable tensors), Rotten Tomatoes, 100
clients, Dirichlet partitions, the model in eval mode, fp32.

Setup. The LoRA B matrices start at zero, which makes every gradient w.r.t. LoRA A
exactly zero, so the trainable tensors are first moved off their initialisation:
`--warmup-steps` centralized backprop steps (AdamW, `--warmup-lr`, batch 8, on
shuffled training sentences), plus optional Gaussian noise (`--init-noise` times
N(0, 1), fixed generator; 0 by default). M clients are sampled as Spry's strategy
samples them (seeded by round); each uses one batch of up to 8 sentences (max 64
tokens) from the training part of its own partition.

Measured, for that one round. G: the example-weighted mean of the clients' exact
(backprop) gradients over all trainable tensors. *Spry*: the tensors are cut into
groups of 2 and dealt round-robin to the clients (`spry.splitting`); each client
estimates the gradient of its slice only, on its batch, and the server assembles,
per tensor, the example-weighted mean over the clients that own it. *FedFGD*: every
client estimates the gradient of all tensors; the global estimate is the weighted
mean. Engines: forward mode (K = 1) and the zero-order MeZO, BAFFLE and FwdLLM
estimators (K = 1), each in both styles. Every estimate is repeated over R
independent draws (one generator per (repeat, client), the same seed for every
method, so all engines see the same directions and differ only in the scalar); the
cosine to G is reported as mean and standard deviation over the repeats. Forward
K = 4 is not run separately: the engine's K = 4 estimate is the mean of 4 K = 1
estimates with independent tangents, and the assembly is linear, so it is the mean
of 4 consecutive K = 1 repeats' global estimates (R / 4 samples).

Heterogeneity bias. A forward gradient is unbiased for the gradient of the tensors
it covers, so the expectation of Spry's estimate (over tangents, given the round's
clients and batches) is the exact gradients restricted to each client's slice and
assembled per tensor. Each tensor then sees only its owners' data, not all clients'.
Its cosine to G and the relative error ||E[Spry] - G|| / ||G|| are measured for IID,
Dirichlet 1.0 and Dirichlet 0.1 partitions (same seeds, same sampled client ids),
averaged over `--bias-rounds` rounds' client samples. FedFGD's expectation is G.

    python -m benchmarks.gradient_quality                  # default, a few minutes
    python -m benchmarks.gradient_quality --repeats 5 --bias-rounds 2   # quick look
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from spry.jsonfile import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ZERO_ORDER = ("mezo", "baffle", "fwdllm")
PARTITIONINGS: tuple[tuple[str, float], ...] = (
    ("iid", 1.0),
    ("dirichlet", 1.0),
    ("dirichlet", 0.1),
)
Grads = dict[str, Tensor]  # stable name -> tensor
Record = dict[str, Any]


@dataclass(frozen=True)
class Method:
    """One way to build the round's global estimate."""

    engine: str
    num_tangents: int
    split: bool  # True: Spry's slices; False: FedFGD (all tensors)
    repeats: int
    exact_head: bool = False  # tuned Spry: every client, the head's exact gradient

    @property
    def label(self) -> str:
        style = "Spry" if self.split else "FedFGD"
        head = " + exact shared head" if self.exact_head else ""
        return f"{style} {self.engine} K={self.num_tangents}{head}"


@dataclass
class Client:
    """One sampled client: its id, its batch and its exact gradient."""

    cid: int
    batch: dict[str, Tensor] | None  # None: empty partition (weight 0)
    weight: int
    exact: Grads | None = None


# ------------------------------------------------------------------------- setup
def build(args: argparse.Namespace) -> tuple[Any, Any]:
    """The default classifier and the default dataset."""
    from spry.config import DataConfig, ModelConfig
    from spry.data import load_for
    from spry.models.classifier import build_classifier

    trainable = build_classifier(ModelConfig(), num_labels=2, seed=args.seed)
    return trainable, load_for(DataConfig())


def warm_up(trainable: Any, train: Any, args: argparse.Namespace) -> list[float]:
    """Move the trainable tensors off init: backprop steps, then optional noise."""
    from spry.classification import classification_loss, iterate_batches

    params = list(trainable.parameters().values())
    losses: list[float] = []
    if args.warmup_steps:
        opt = torch.optim.AdamW(params, lr=args.warmup_lr)
        rows = train.shuffle(seed=args.seed).select(range(8 * args.warmup_steps))
        for batch in iterate_batches(
            rows, trainable.tokenizer, batch_size=8, max_length=args.max_length
        ):
            opt.zero_grad()
            loss, _ = classification_loss(trainable.model, batch)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        opt.zero_grad(set_to_none=True)
    if args.init_noise:
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=gen), alpha=args.init_noise)
    return losses


def sample_clients(seed: int, server_round: int, num: int, total: int) -> list[int]:
    """Client ids drawn as Spry's strategy draws them for `server_round`."""
    from spry.splitting import sample_clients as strategy_sampling

    return strategy_sampling(seed, server_round, num, total)


def client_batches(
    train: Any, tokenizer: Any, cids: Sequence[int], partitioner: str, alpha: float,
    args: argparse.Namespace,
) -> list[Client]:  # fmt: skip
    """One batch (up to 8 sentences) per client from its partition's training part."""
    from spry.classification import tokenize
    from spry.config import DataConfig
    from spry.data import client_split, make_partitioner

    cfg = DataConfig(partitioner=partitioner, alpha=alpha)
    parts = make_partitioner(train, cfg, seed=args.seed)
    clients = []
    for cid in cids:
        own, _ = client_split(
            parts.load_partition(cid), cfg, seed=args.seed, partition_id=cid
        )
        rows = own.select(range(min(args.batch, len(own))))
        batch = (
            tokenize(tokenizer, rows["text"], rows["label"], args.max_length)
            if len(rows)
            else None
        )
        clients.append(Client(cid, batch, len(rows)))
    return clients


# ---------------------------------------------------------------------- gradients
def estimate(
    trainable: Any, engine: Any, client: Client, names: Sequence[str], seed: int
) -> Grads:
    """`engine`'s estimate on `client`'s batch for the tensors `names`."""
    from spry.classification import classification_loss

    assert client.batch is not None
    live = trainable.parameters()
    params = {trainable.own_name(n): live[n] for n in names}
    gen = torch.Generator().manual_seed(seed)
    out = engine.estimate(
        trainable.model, classification_loss, client.batch, params, generator=gen
    )
    return {n: out.grads[trainable.own_name(n)].detach().clone() for n in names}


def fill_exact(trainable: Any, clients: Sequence[Client]) -> None:
    """Backprop gradients of every tensor for every non-empty client."""
    from spry.engines import make_engine

    backprop, names = make_engine("backprop"), list(trainable.names)
    for c in clients:
        if c.batch is not None and c.exact is None:
            c.exact = estimate(trainable, backprop, c, names, 0)


def assemble(
    pieces: Sequence[tuple[int, Grads]], names: Sequence[str], like: Grads
) -> Grads:
    """Per tensor, the weighted mean over the pieces holding it (zero if none)."""
    out = {}
    for n in names:
        held = [(w, g[n]) for w, g in pieces if n in g and w > 0]
        total = sum(w for w, _ in held)
        out[n] = (
            sum(w * t for w, t in held) / total if total else torch.zeros_like(like[n])
        )
    return out


def flat(grads: Grads, names: Sequence[str]) -> Tensor:
    return torch.cat([grads[n].reshape(-1).double() for n in names])


def cosine(a: Grads, b: Grads, names: Sequence[str]) -> float:
    """Cosine of the two vectors; 0 when either is all zeros (no direction)."""
    x, y = flat(a, names), flat(b, names)
    norms = x.norm() * y.norm()
    return float(x @ y / norms) if norms > 0 else 0.0


def rel_error(a: Grads, b: Grads, names: Sequence[str]) -> float:
    x, y = flat(a, names), flat(b, names)
    return float((x - y).norm() / y.norm())


def assignment(
    names: Sequence[str], clients: Sequence[Client], *, shared_head: bool = False
) -> dict[int, list[str]]:
    """Spry's split: groups of 2 consecutive tensors dealt round-robin.

    With `shared_head` the head is not dealt but given to every client (the tuned
    default, `share-head=true`).
    """
    from spry.models import is_head
    from spry.splitting import assign_groups, make_groups

    head = [n for n in names if is_head(n)] if shared_head else []
    body = [n for n in names if n not in head]
    cids = [c.cid for c in clients]
    return assign_groups(make_groups(body, 2), cids, shared=head)


def global_exact(clients: Sequence[Client], names: Sequence[str]) -> Grads:
    """G: the example-weighted mean of the clients' exact gradients."""
    pieces = [(c.weight, c.exact) for c in clients if c.exact is not None]
    return assemble(pieces, names, pieces[0][1])


def expected_spry(
    clients: Sequence[Client], names: Sequence[str], owned: dict[int, list[str]]
) -> Grads:
    """E[Spry]: exact gradients restricted to each slice, assembled per tensor."""
    pieces = [
        (c.weight, {n: c.exact[n] for n in owned[c.cid]})
        for c in clients
        if c.exact is not None
    ]
    # `like` must hold every tensor: the exact gradient of a client that has one.
    like = next(c.exact for c in clients if c.exact is not None)
    return assemble(pieces, names, like)


# ------------------------------------------------------------------------ probing
def run_method(
    trainable: Any,
    method: Method,
    clients: Sequence[Client],
    owned: dict[int, list[str]],
    targets: dict[str, Grads],
    args: argparse.Namespace,
) -> tuple[Record, list[Grads]]:
    """Cosines of `method`'s assembled estimate to each target, and the estimates."""
    from spry.engines import make_engine
    from spry.models import is_head
    from spry.seeding import STREAM_TANGENTS, derive_seed

    options = {"exact": is_head, "tangent_batch": 0} if method.exact_head else {}
    engine = make_engine(method.engine, num_tangents=method.num_tangents, **options)
    names = list(trainable.names)
    if method.exact_head:  # the body's pairs dealt, the head shared by everyone
        owned = assignment(names, clients, shared_head=True)
    estimates: list[Grads] = []
    own: list[float] = []  # each client's estimate vs its own exact slice gradient
    zero_pieces = 0  # estimates that came out exactly zero (fp32 cancellation)
    start = time.perf_counter()
    for r in range(method.repeats):
        pieces = []
        for c in clients:
            if c.batch is None:
                continue
            slice_ = owned[c.cid] if method.split else names
            seed = derive_seed(args.seed, STREAM_TANGENTS, r, c.cid)
            piece = estimate(trainable, engine, c, slice_, seed)
            pieces.append((c.weight, piece))
            assert c.exact is not None
            own.append(cosine(piece, c.exact, slice_))
            zero_pieces += not any(bool(t.any()) for t in piece.values())
        estimates.append(assemble(pieces, names, targets["G"]))
    seconds = time.perf_counter() - start
    rec = summarize(method, estimates, targets, names)
    return {
        **rec,
        "seconds": seconds,
        "derived_from_k1": False,
        "cosine_client_own_mean": statistics.mean(own),
        "cosine_client_own_std": stdev(own),
        "cosine_client_own_count": len(own),
        "zero_estimates": zero_pieces,
    }, estimates


def summarize(
    method: Method, estimates: Sequence[Grads], targets: dict[str, Grads],
    names: Sequence[str],
) -> Record:  # fmt: skip
    """Cosines of each repeat's global estimate to each target."""
    cos = {k: [cosine(e, t, names) for e in estimates] for k, t in targets.items()}
    lora = [n for n in names if "lora_" in n]
    cos_lora = [cosine(e, targets["G"], lora) for e in estimates]
    g = cos["G"]
    print(
        f"  {method.label:<24} cos(G) {statistics.mean(g):+.4f} "
        f"± {stdev(g):.4f}  ({len(g)} repeats)",
        file=sys.stderr,
    )
    return {
        "method": method.label,
        "engine": method.engine,
        "num_tangents": method.num_tangents,
        "style": "spry" if method.split else "fedfgd",
        "exact_head": method.exact_head,
        "repeats": len(g),
        "cosine_to_G": g,
        "cosine_to_G_mean": statistics.mean(g),
        "cosine_to_G_std": stdev(g),
        "cosine_to_G_lora_only_mean": statistics.mean(cos_lora),
        "cosine_to_G_lora_only_std": stdev(cos_lora),
        **{
            f"cosine_to_{k}_mean": statistics.mean(v)
            for k, v in cos.items()
            if k != "G"
        },
    }


def derived_k(
    method: Method, estimates: Sequence[Grads], k: int, targets: dict[str, Grads],
    names: Sequence[str],
) -> Record:  # fmt: skip
    """Forward K = k as the mean of k consecutive K = 1 repeats' estimates."""
    means = [
        {n: sum(e[n] for e in estimates[i : i + k]) / k for n in names}
        for i in range(0, len(estimates) - k + 1, k)
    ]
    derived = Method(method.engine, k, method.split, len(means))
    return {**summarize(derived, means, targets, names), "derived_from_k1": True}


def stdev(xs: Sequence[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def methods(args: argparse.Namespace) -> list[Method]:
    """Forward K = 1 (R repeats) and zero-order K = 1 (R_other repeats)."""
    styles = (True, False)
    out = [Method("forward", 1, split, args.repeats) for split in styles]
    out.append(Method("forward", 1, True, args.repeats, exact_head=True))
    for name in args.zero_order:
        out += [Method(name, 1, split, args.repeats_other) for split in styles]
    return out


def bias_sweep(
    trainable: Any, train: Any, args: argparse.Namespace, cache: dict[Any, Any]
) -> list[Record]:
    """cos(E[Spry], G) and ||E[Spry] - G|| / ||G|| per partitioning and round."""
    names = list(trainable.names)
    lora = [n for n in names if "lora_" in n]
    out: list[Record] = []
    for part, alpha in PARTITIONINGS:
        rs = []
        for rnd in range(1, args.bias_rounds + 1):
            clients = round_clients(trainable, train, part, alpha, rnd, args, cache)
            g = global_exact(clients, names)
            e = expected_spry(clients, names, assignment(names, clients))
            rs.append(
                {
                    "partitioner": part,
                    "alpha": alpha if part == "dirichlet" else None,
                    "round": rnd,
                    "clients": [c.cid for c in clients],
                    "examples": [c.weight for c in clients],
                    "cosine": cosine(e, g, names),
                    "relative_error": rel_error(e, g, names),
                    "cosine_lora_only": cosine(e, g, lora),
                    "relative_error_lora_only": rel_error(e, g, lora),
                }
            )
        out += rs
        print(
            f"  bias {label_of(part, alpha):<8} cos {mean_of(rs, 'cosine'):.4f}  "
            f"rel err {mean_of(rs, 'relative_error'):.4f}",
            file=sys.stderr,
        )
    return out


def round_clients(
    trainable: Any, train: Any, part: str, alpha: float, rnd: int,
    args: argparse.Namespace, cache: dict[Any, Any],
) -> list[Client]:  # fmt: skip
    """The round's sampled clients with batches and exact gradients (cached)."""
    key = (part, alpha if part == "dirichlet" else None, rnd)
    if key not in cache:
        cids = sample_clients(args.seed, rnd, args.clients, 100)
        cache[key] = client_batches(train, trainable.tokenizer, cids, part, alpha, args)
        fill_exact(trainable, cache[key])
    return cache[key]


def label_of(part: str, alpha: float | None) -> str:
    return "iid" if part == "iid" else f"dir {alpha:g}"


def mean_of(rs: Sequence[Record], key: str) -> float:
    return statistics.mean(r[key] for r in rs)


def std_of(rs: Sequence[Record], key: str) -> float:
    return stdev([r[key] for r in rs])


# ------------------------------------------------------------------------ reports
def dims(trainable: Any, owned: dict[int, list[str]]) -> Record:
    """Trainable dimensions: whole model and per client slice."""
    sizes = {n: p.numel() for n, p in trainable.parameters().items()}
    return {
        "whole": sum(sizes.values()),
        "per_client": {str(c): sum(sizes[n] for n in ns) for c, ns in owned.items()},
        "tensors_per_client": {str(c): len(ns) for c, ns in owned.items()},
    }


def norms(g: Grads) -> dict[str, float]:
    """||G|| split into LoRA A, LoRA B and head tensors."""
    kinds = {"lora_A": "lora_A", "lora_B": "lora_B", "head": "classifier"}
    return {
        k: math.sqrt(sum(float(t.double().norm()) ** 2 for n, t in g.items() if s in n))
        for k, s in kinds.items()
    }


def markdown(res: Record) -> str:
    """Two tables and how they were measured."""
    s, d = res["setup"], res["dims"]
    per = list(d["per_client"].values())
    out = [
        f"## Gradient quality of one round ({s['clients']} clients, batch "
        f"{s['batch']}, Dirichlet {s['alpha']:g}): cosine to the true global gradient",
        "",
        f"Trainable dimensions d: whole model {d['whole']:,}; Spry slice per client "
        f"{min(per):,}-{max(per):,} (median {int(statistics.median(per)):,}).",
        "",
        "| method | engine | K | repeats | per client: cos(est, own exact) "
        "| cos(est, G) mean ± std "
        "| cos(est, E[Spry]) mean | LoRA tensors only: cos(est, G) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["methods"]:
        style = "Spry (slices)" if r["style"] == "spry" else "FedFGD (all)"
        if r.get("exact_head"):
            style = "Spry (slices) + every client's exact head"
        client = (
            f"{r['cosine_client_own_mean']:.4f} ± {r['cosine_client_own_std']:.4f}"
            if r.get("cosine_client_own_mean") is not None
            else "-"
        )
        if r.get("zero_estimates"):
            client += f" ({r['zero_estimates']} of {r['cosine_client_own_count']} zero)"
        out.append(
            f"| {style} | {r['engine']} | {r['num_tangents']} | {r['repeats']} "
            f"| {client} "
            f"| {r['cosine_to_G_mean']:.4f} ± {r['cosine_to_G_std']:.4f} "
            f"| {r['cosine_to_E_spry_mean']:.4f} "
            f"| {r['cosine_to_G_lora_only_mean']:.4f} ± "
            f"{r['cosine_to_G_lora_only_std']:.4f} |"
        )
    out += [
        "",
        f"## Heterogeneity bias of Spry's expected estimate (mean ± std over "
        f"{s['bias_rounds']} rounds' client samples)",
        "",
        "| partitions | cos(E[Spry], G) | ‖E[Spry] − G‖ / ‖G‖ "
        "| LoRA only: cos | LoRA only: rel. error | empty clients |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (part, alpha), rs in group_bias(res["bias"]).items():
        empty = sum(e == 0 for r in rs for e in r["examples"])
        out.append(
            f"| {label_of(part, alpha)} | {mean_of(rs, 'cosine'):.4f} ± "
            f"{std_of(rs, 'cosine'):.4f} | {mean_of(rs, 'relative_error'):.4f} ± "
            f"{std_of(rs, 'relative_error'):.4f} "
            f"| {mean_of(rs, 'cosine_lora_only'):.4f} "
            f"| {mean_of(rs, 'relative_error_lora_only'):.4f} | {empty} |"
        )
    out += ["", how_measured(res)]
    return "\n".join(out) + "\n"


def group_bias(bias: Sequence[Record]) -> dict[tuple[str, float | None], list[Record]]:
    out: dict[tuple[str, float | None], list[Record]] = {}
    for r in bias:
        out.setdefault((r["partitioner"], r["alpha"]), []).append(r)
    return out


def how_measured(res: Record) -> str:
    s = res["setup"]
    prose = " ".join(p.replace("\n", " ") for p in (__doc__ or "").split("\n\n")[1:5])
    n = res["grad_norms"]
    return (
        f"**How measured.** {prose} This run: seed {s['seed']}, {s['warmup_steps']} "
        f"warm-up steps (AdamW lr {s['warmup_lr']:g}; loss {s['warmup_loss_first']:.3f}"
        f" -> {s['warmup_loss_last']:.3f}), init noise {s['init_noise']:g}, probe "
        f"round {s['probe_round']} (clients {s['probe_clients']}, examples "
        f"{s['probe_examples']}). ||G|| by part: LoRA A {n['lora_A']:.2e}, LoRA B "
        f"{n['lora_B']:.2e}, head {n['head']:.2e}, so the head dominates G; the "
        f"LoRA-only columns restrict both vectors to the 24 LoRA tensors. "
        f"cos(est, E[Spry]) isolates the tangent noise from the split's bias. "
        f"*Per client: cos(est, own exact)* compares each client's estimate with its "
        f"own exact gradient over the same tensors and batch (mean ± std over clients "
        f"and repeats): the dimension effect alone, without the round's "
        f"heterogeneity; for a K = 1 Gaussian tangent over d dimensions it is about "
        f"sqrt(2 / (pi d)) on average. An estimate that came out exactly zero (the "
        f"fp32 loss difference rounded to 0) counts as cosine 0 and is counted. "
        f"Clients with an empty partition have weight 0; a tensor none of its "
        f"owners could train is 0 in E[Spry]. Wall time {res['wall_seconds']:.0f} s; "
        f"torch {s['torch']}, {s['threads']} threads, {s['machine']}."
    )


def plot(res: Record, path: Path) -> None:
    """Bars of cos(est, G) per method; cos and relative error of E[Spry] vs alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), width_ratios=(2, 1))
    rs = res["methods"]
    colors = ["C0" if r["style"] == "spry" else "C1" for r in rs]
    ax.bar(
        range(len(rs)),
        [r["cosine_to_G_mean"] for r in rs],
        yerr=[r["cosine_to_G_std"] for r in rs],
        color=colors,
        capsize=3,
    )
    ax.set_xticks(range(len(rs)), [r["method"] for r in rs], rotation=35, ha="right")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(ylabel="cosine(estimate, G)", title="One round's global estimate vs G")
    groups = group_bias(res["bias"])
    labels = [label_of(p, a) for p, a in groups]
    for key, color, name in (
        ("cosine", "C0", "cos(E[Spry], G)"),
        ("relative_error", "C3", "||E[Spry]-G|| / ||G||"),
    ):
        bx.errorbar(
            labels,
            [mean_of(g, key) for g in groups.values()],
            yerr=[std_of(g, key) for g in groups.values()],
            marker="o",
            color=color,
            capsize=3,
            label=name,
        )
    bx.axhline(0, color="k", lw=0.5)
    bx.set(xlabel="client partitions", title="Heterogeneity bias of the split")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> Record:
    """Warm up, probe one round with every method, sweep the bias; return results."""
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    trainable, data = build(args)
    losses = warm_up(trainable, data.train, args)
    trainable.model.eval()
    names = list(trainable.names)
    cache: dict[Any, Any] = {}
    clients = round_clients(
        trainable, data.train, "dirichlet", args.alpha, args.probe_round, args, cache
    )
    owned = assignment(names, clients)
    targets = {
        "G": global_exact(clients, names),
        "E_spry": expected_spry(clients, names, owned),
    }
    print(f"setup done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    probes = []
    for m in methods(args):
        rec, estimates = run_method(trainable, m, clients, owned, targets, args)
        probes.append(rec)
        if m.engine == "forward" and m.num_tangents == 1 and not m.exact_head:
            probes += [
                derived_k(m, estimates, k, targets, names)
                for k in args.extra_k
                if len(estimates) >= k
            ]
    probes.sort(key=lambda r: (r["engine"] != "forward", r["num_tangents"]))
    bias = bias_sweep(trainable, data.train, args, cache)
    setup = {
        **{k: v for k, v in vars(args).items() if k != "out"},
        "model": "all-MiniLM-L6-v2 + LoRA r=1 (query, value) + head, eval, fp32",
        "dataset": "rotten-tomatoes",
        "num_clients_total": 100,
        "probe_clients": [c.cid for c in clients],
        "probe_examples": [c.weight for c in clients],
        "assignment": {str(c): ns for c, ns in owned.items()},
        "warmup_losses": losses,
        "warmup_loss_first": losses[0] if losses else float("nan"),
        "warmup_loss_last": losses[-1] if losses else float("nan"),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    return {
        "setup": setup,
        "dims": dims(trainable, owned),
        "grad_norms": norms(targets["G"]),
        "methods": probes,
        "bias": bias,
        "wall_seconds": time.perf_counter() - start,
    }


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gradient_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--seed", type=int, default=0)
    add("--clients", type=int, default=10, help="clients per round (M)")
    add("--batch", type=int, default=8, help="examples per client batch")
    add("--max-length", type=int, default=64)
    add("--alpha", type=float, default=1.0, help="Dirichlet alpha of the probe round")
    add("--probe-round", type=int, default=1, help="round whose clients are probed")
    add("--repeats", type=int, default=20, help="R for forward K=1")
    add("--repeats-other", type=int, default=10, help="R for zero-order")
    add("--extra-k", type=ints, default=[4], help="forward K from K=1 repeats")
    add(
        "--zero-order",
        type=lambda s: [m for m in s.split(",") if m],
        default=list(ZERO_ORDER),
        help="comma-separated zero-order engines",
    )
    add("--bias-rounds", type=int, default=5, help="client samples for the bias")
    add("--warmup-steps", type=int, default=30, help="backprop steps before probing")
    add("--warmup-lr", type=float, default=1e-3)
    add("--init-noise", type=float, default=0.0, help="add this * N(0,1) after warmup")
    add("--threads", type=int, default=2, help="torch.set_num_threads")
    add("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args(argv)
    if unknown := sorted(set(args.zero_order) - set(ZERO_ORDER)):
        p.error(f"unknown zero-order engine(s) {unknown}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the probe and write gradient_quality.json/.md/.png."""
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "gradient_quality.json", res)
    (args.out / "gradient_quality.md").write_text(text := markdown(res))
    plot(res, args.out / "gradient_quality.png")
    print(text)


if __name__ == "__main__":
    main()
