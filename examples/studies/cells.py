"""One random instance per sample, a box model against a point model (the C. elegans cells study's design),
with LiteMedSAM on the shared 2D nuclei.

    python examples/studies/cells.py [--data DIR] [--out studies/cells] [--epochs 30]

Each training step draws one random object of each cached sample (`objects_per_sample=1`) and its prompt;
one decoder is finetuned on boxes, one on center points. Validation: 40% of the 256² tiles (`--split tile`;
the shared set has two images). Every model is scored with both prompts on the held-out tiles.
The published study (C. elegans cells, SAM): the box model beats the point model on boxes, and the point
model is the one that works from a click.
"""

from __future__ import annotations


import sam_cache
from common import parser, report, scores
from nuclei_common import nuclei_cache


def main() -> None:
    ap = parser(__doc__, "nuclei-stardist", "studies/cells", epochs=30, lr=1e-4)
    a = ap.parse_args()
    cache = nuclei_cache(a.data, a.out)
    runs = []
    for prompt in ("box", "center-point"):
        run = a.out / f"model-{prompt}"
        config = sam_cache.FinetuneConfig(prompt=prompt, objects_per_sample=1, epochs=a.epochs, lr=a.lr, split="tile",
                                          val_fraction=0.4, batch_size=1)
        print(sam_cache.finetune(cache, run, config, overwrite=True))
        runs.append(str(run))
    results = sam_cache.ablate(cache, a.out / "ablation", prompts=("box", "center-point"),
                               checkpoints=("base", *runs), overwrite=True)
    report(a.out, f"nuclei, one random instance per sample, LiteMedSAM, held-out tiles: {results.attrs['scored']}",
           scores(results), "C. elegans cells: box and point models each best on their own prompt")


if __name__ == "__main__":
    main()
