"""Central probe: CLIPScope's methods on a short offline CLIP build, no federation.

Before the full build (about 20 minutes on one shared core) and the federated
task, this asks the question small: one process builds an offline CLIP from
`--train-per-set` images per set for `--epochs` epochs (cached under
$SPRY_CACHE like any build), mines `--nearest` + `--farthest` WordNet labels
from a seeded sample of `--candidates` nouns, and scores both ID/OOD pairs
(`fashion-vs-digits`; `fashion-near`, whose CLIP is built with the four near-OOD
classes held out) with every method. The prior is the smoothed sum of
`--clients` clients' prediction counts on the ID classes' train images.

    python -m benchmarks.clipscope_probe                       # ~4 min, 1 thread
    python -m benchmarks.clipscope_probe --train-per-set 0 --epochs 3  # full build

Prints the builds' zero-shot reports, the first mined labels and a table. An
under-trained tower makes the numbers indicative only.
"""

from __future__ import annotations

import argparse
import time

from spry.tasks.clipscope.detector import mine_from_wordnet
from spry.tasks.clipscope.evaluation import (
    METHODS,
    NEAR_OOD_CLASSES,
    compare,
    ood_pairs,
)
from spry.vision.build import OfflineClipConfig, build_offline_clip
from spry.vision.images import FASHION_CLASSES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-set", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=5000)
    parser.add_argument("--nearest", type=int, default=100)
    parser.add_argument("--farthest", type=int, default=100)
    parser.add_argument("--images", type=int, default=1000, help="per side")
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    started = time.perf_counter()
    near_names = tuple(FASHION_CLASSES[c] for c in NEAR_OOD_CLASSES)
    pairs = {p.name: p for p in ood_pairs(max_images=args.images)}
    for name, held in (("fashion-vs-digits", ()), ("fashion-near", near_names)):
        config = OfflineClipConfig(
            max_train_per_set=args.train_per_set,
            epochs=args.epochs,
            held_out_classes=held,
        )
        model, report = build_offline_clip(config)
        print("\n".join(report.lines()), flush=True)
        pair = pairs[name]
        mined = mine_from_wordnet(
            model,
            pair.id_names,
            num_nearest=args.nearest,
            num_farthest=args.farthest,
            max_candidates=args.candidates,
            text_key="offline:" + config.text_model,
        )
        print(f"{name}: nearest {mined.nearest[:8]}\n  farthest {mined.farthest[:8]}")
        result = compare(model, pair, mined, num_clients=args.clients)
        print(f"| {name} | AUROC | FPR95 |\n|---|---|---|")
        for method in METHODS:
            m = result.metrics[method]
            print(f"| {method} | {m['auroc']:.3f} | {m['fpr95']:.3f} |")
        prior = ", ".join(f"{p:.3f}" for p in result.prior)
        elapsed = time.perf_counter() - started
        print(
            f"prior from client counts: [{prior}]; {elapsed:.0f} s so far", flush=True
        )


if __name__ == "__main__":
    main()
