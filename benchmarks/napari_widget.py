"""The napari plugin's latency on this machine, in one run: opening a cache in napari (every source's layers
built, the first one shown, nothing else read) and the prompt widget's box and point prompts on the cached
embedding (decode, paint into the masks layer; no encoder), headless (napari's ViewerModel, no canvas).

    python benchmarks/napari_widget.py                         # LiteMedSAM on 32 EM tiles; open 1024 tiles
    python benchmarks/napari_widget.py --n 8 --open-n 64       # a check

The widget's cache: N EM patches of 256² (../shared/data/em-isbi2012) embedded with LiteMedSAM's trained
weights. The opening row: a cache of OPEN_N such patches from the tiny random-init model (opening reads the
coordinates and the first source's tiles, whatever the model). Prompts: boxes around the ground truth's
objects and their centre points, one at a time as a user draws them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import npe2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from napari.components import ViewerModel  # noqa: E402
from scipy import ndimage  # noqa: E402

from common import OUT, save, table  # noqa: E402
from finetune_speed import em_data  # noqa: E402
import sam_cache  # noqa: E402
from sam_cache.napari.widget import PromptWidget  # noqa: E402


def cache(model: str, n: int) -> Path:
    path = OUT / f"napari_{model}_{n}.zarr"
    if not path.exists():
        sam_cache.embed(em_data(n), path, model=model, random_init=model != "lite_medsam", patch=256, device="cpu",
                        progress=False)
    return path


def opened(path) -> tuple[ViewerModel, float]:
    viewer = ViewerModel()
    t = time.perf_counter()
    viewer.open(str(path), plugin="samcache")
    return viewer, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lite_medsam")
    ap.add_argument("--n", type=int, default=32, help="tiles of the widget's cache (256² EM patches)")
    ap.add_argument("--prompts", type=int, default=20, help="boxes, and as many points, timed one at a time")
    ap.add_argument("--open-n", type=int, default=1024, help="tiles of the cache timed opening (tiny model)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    npe2.PluginManager.instance().discover()
    rows = []
    big = cache("tiny", args.open_n)
    viewer, s = opened(big)
    rows.append({"work": f"open a cache of {args.open_n} tiles", "seconds": s, "layers": len(viewer.layers)})
    print(f"opened {big}: {s:.2f} s, {len(viewer.layers)} layers", flush=True)

    viewer, s = opened(cache(args.model, args.n))
    rows.append({"work": f"open a cache of {args.n} tiles", "seconds": s, "layers": len(viewer.layers)})
    image = viewer.layers[0]
    truth = np.asarray(viewer.layers[1].data) > 0
    objects = ndimage.find_objects(ndimage.label(truth)[0])
    objects = [o for o in objects if (o[0].stop - o[0].start) * (o[1].stop - o[1].start) >= 100][:args.prompts]
    t = time.perf_counter()
    widget = PromptWidget(viewer)  # the first image chosen: opens its cache and loads the base decoder
    rows.append({"work": "open the widget (cache and decoder loaded)", "seconds": time.perf_counter() - t})
    assert widget.image.value is image
    for kind in ("box", "point"):
        if kind == "box":
            layer = viewer.add_shapes(name="boxes", shape_type="rectangle")
        else:
            layer = viewer.add_points(name="points", features={"label": np.zeros(0, int)})
        widget.prompt.value = layer
        times = []
        for ys, xs in objects:
            if kind == "box":
                layer.add_rectangles(np.array([[ys.start, xs.start], [ys.stop - 1, xs.stop - 1]]))
            else:
                layer.data = [[(ys.start + ys.stop) / 2, (xs.start + xs.stop) / 2]]
            t = time.perf_counter()
            widget.segment()
            times.append(time.perf_counter() - t)
        rows.append({"work": f"widget: a {kind} prompt", "seconds": float(np.median(times)),
                     "p90": float(np.percentile(times, 90)), "max": float(np.max(times)), "prompts": len(times)})
    print(f"{args.model}, CPU ({torch.get_num_threads()} threads), headless")
    print(table(rows, ["work", "seconds", "p90", "max", "prompts", "layers"]))
    print("results:", save(f"napari_{args.model}_cpu", vars(args), rows))


if __name__ == "__main__":
    main()
