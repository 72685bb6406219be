"""SAM's automatic mask generator, driven from cached embeddings.

The algorithm and its defaults are `segment_anything.SamAutomaticMaskGenerator`'s, for crop layer 0
(the whole tile), built from segment_anything's own helpers (`utils.amg`: point grids, `MaskData`,
`calculate_stability_score`, `batched_mask_to_box`, the RLE functions, and the generator's own
`postprocess_small_regions`) and torchvision's `batched_nms`. It is split in two at the point where the
knobs start to matter:

- `candidates`: the decoder pass. A grid of points, as single-point prompts with three masks each, goes
  through the one decode path (`decode.pipeline.decode_prompts`) for B tiles × K points at a time; the
  masks are brought to each tile's size by SAM's postprocessing (in one resize), scored (predicted IoU; stability for
  every offset asked for), thresholded, boxed and run-length encoded. Candidates that no setting of the
  sweep would keep are dropped here.
- `select`: one setting's filters on those candidates (predicted IoU, stability, box NMS, small regions
  and holes). It decodes nothing, so a sweep over thresholds costs no decoder time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    MaskData,
    area_from_rle,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_point_grid,
    calculate_stability_score,
    coco_encode_rle,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    rle_to_mask,
)
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.ops.boxes import batched_nms

from ..decode.pipeline import PromptBatch, decode_prompts, resize_logits, rows_per_pass
from .knobs import Settings

MASK_THRESHOLD = Sam.mask_threshold  # 0.0: logits above it are foreground
RLE_CHUNK = 64  # masks run-length encoded per call (the stock generator encodes a points_per_batch batch)


def stability_key(offset: float) -> str:
    return f"stability_score@{float(offset):g}"


def grid_points(points_per_side: int, h: int, w: int) -> np.ndarray:
    """The generator's point grid for a tile of size (h, w): [n², 2] (x, y) in the tile's pixel frame."""
    return build_point_grid(points_per_side) * np.array([[w, h]])


@torch.no_grad()
def candidates(decoder, embeddings: torch.Tensor, sizes: Sequence[tuple[int, int]], points_per_side: int,
               offsets: Sequence[float] = (1.0,), min_iou: float = 0.0, min_stability: float = 0.0,
               points_per_batch: int = 256, mask_mode: str = "auto") -> list[MaskData]:
    """The thresholded masks of every grid point on each of B tiles (embeddings [B, C, h', w'], valid sizes
    (h, w)), as SamAutomaticMaskGenerator's `_process_batch` leaves them: rles, boxes, iou_preds, points,
    and one stability score per offset (`stability_key`). Candidates with predicted IoU not above
    `min_iou`, or whose stability is under `min_stability` for every offset, are dropped (0 keeps all),
    which is what the loosest setting of a sweep asks.

    `points_per_batch` prompts (B tiles × K points each) are scored together; the decoder takes them in
    passes of `rows_per_pass` rows (4 on a CPU).

    `mask_mode`: SAM's generator asks for the three multimask outputs of every point (`best-iou`, the
    default for SAM models); a model trained only on its single-mask output (LiteMedSAM: `auto` resolves
    to `single`) gives one candidate per point from that token, since its multimask tokens were never
    trained."""
    img_size = decoder.img_size[0]
    resize = ResizeLongestSide(img_size)
    rows = rows_per_pass(decoder.mask_decoder.iou_token.weight.device)  # decoder pass size: the device's
    n = points_per_side ** 2
    K = max(1, min(n, points_per_batch))
    per_pass = max(1, points_per_batch // K)
    pieces: list[list[MaskData]] = [[] for _ in sizes]
    grids = [grid_points(points_per_side, h, w) for h, w in sizes]
    for t0 in range(0, len(sizes), per_pass):
        tiles = list(range(t0, min(len(sizes), t0 + per_pass)))
        emb = embeddings[tiles[0]:tiles[-1] + 1]
        valid = torch.tensor([sizes[t] for t in tiles])
        for p0 in range(0, n, K):
            pts = [grids[t][p0:p0 + K] for t in tiles]
            model_pts = np.stack([resize.apply_coords(p, sizes[t]) for p, t in zip(pts, tiles)])
            points = torch.as_tensor(model_pts, dtype=torch.float32)[:, :, None, :]  # [B, k, 1, 2]
            labels = torch.ones(points.shape[:3], dtype=torch.int)
            dec = decode_prompts(decoder, emb, PromptBatch(points, labels, None, points.shape[1]), valid,
                                 mask_mode, tile_masks=False, rows=rows)
            for b, t in enumerate(tiles):
                h, w = sizes[t]
                logits = resize_logits(decoder, dec.logits[b].float(), (h, w))
                pieces[t].append(_score(logits, dec.iou[b].float(), pts[b], (h, w), offsets, min_iou, min_stability))
    return [_joined(p) for p in pieces]


def _joined(pieces: list[MaskData]) -> MaskData:
    """MaskData.cat's result without its deepcopy of every RLE (which took longer than the decoding)."""
    if len(pieces) == 1:
        return pieces[0]
    keys = [k for k, _ in pieces[0].items()]
    return MaskData(**{k: torch.cat([p[k] for p in pieces]) if isinstance(pieces[0][k], torch.Tensor)
                       else [x for p in pieces for x in p[k]] for k in keys})


def _score(logits: torch.Tensor, iou: torch.Tensor, points: np.ndarray, size, offsets, min_iou, min_stability):
    """SamAutomaticMaskGenerator._process_batch for logits [k, M, h, w] (M = 3 multimask outputs, or 1),
    with the loosest filters."""
    h, w = size
    data = MaskData(masks=logits.flatten(0, 1), iou_preds=iou.flatten(0, 1),
                    points=torch.as_tensor(points.repeat(logits.shape[1], axis=0)))
    if min_iou > 0.0:
        data.filter(data["iou_preds"] > min_iou)
    for offset in offsets:
        data[stability_key(offset)] = calculate_stability_score(data["masks"], MASK_THRESHOLD, offset)
    if min_stability > 0.0:
        data.filter(torch.stack([data[stability_key(o)] >= min_stability for o in offsets]).any(0))
    data["masks"] = data["masks"] > MASK_THRESHOLD
    data["boxes"] = batched_mask_to_box(data["masks"])
    crop_box = [0, 0, w, h]  # crop layer 0: the crop is the whole tile, so no box is near a crop edge
    keep = ~is_box_near_crop_edge(data["boxes"], crop_box, crop_box)
    if not torch.all(keep):
        data.filter(keep)
    # mask_to_rle_pytorch looks through the changes of all its masks once per mask (time ~ masks²): chunks
    masks = data["masks"]
    data["rles"] = [r for i in range(0, len(masks), RLE_CHUNK) for r in mask_to_rle_pytorch(masks[i:i + RLE_CHUNK])]
    del data["masks"]
    return data


def select(cands: MaskData, s: Settings) -> MaskData:
    """One setting's masks from a tile's candidates, as SamAutomaticMaskGenerator.generate keeps them."""
    data = MaskData(**dict(cands.items()))  # a shallow copy: filtering replaces entries, never edits them
    if s.pred_iou_thresh > 0.0:
        data.filter(data["iou_preds"] > s.pred_iou_thresh)
    data["stability_score"] = data[stability_key(s.stability_score_offset)]
    if s.stability_score_thresh > 0.0:
        data.filter(data["stability_score"] >= s.stability_score_thresh)
    for key in [k for k, _ in data.items() if k.startswith("stability_score@")]:
        del data[key]
    keep = batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data["boxes"])),
                       iou_threshold=s.box_nms_thresh)
    data.filter(keep)
    data.to_numpy()
    if s.min_mask_region_area > 0:
        data = SamAutomaticMaskGenerator.postprocess_small_regions(
            data, s.min_mask_region_area, max(s.box_nms_thresh, s.crop_nms_thresh))
    return data


def records(data: MaskData, size, output_mode: str = "binary_mask") -> list[dict]:
    """A tile's masks as SamAutomaticMaskGenerator.generate returns them (its keys and output modes)."""
    h, w = size
    encode = {"coco_rle": coco_encode_rle, "binary_mask": rle_to_mask, "uncompressed_rle": lambda r: r}[output_mode]
    return [{
        "segmentation": encode(rle),
        "area": area_from_rle(rle),
        "bbox": box_xyxy_to_xywh(np.asarray(data["boxes"][i])).tolist(),
        "predicted_iou": float(data["iou_preds"][i]),
        "point_coords": [np.asarray(data["points"][i]).tolist()],
        "stability_score": float(data["stability_score"][i]),
        "crop_box": [0, 0, w, h],
    } for i, rle in enumerate(data["rles"])]
