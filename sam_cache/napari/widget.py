"""The prompt widget (npe2 `widgets`): a box or point prompt on the visible slice of a cache's source,
decoded from the cached embedding by the base decoder or a finetune run (`predict`'s decode path, so its
mask is predict's for the same prompt); no encoder runs. Each mask is painted into a Labels layer of its
source with the next id, as `predict` numbers its prompts.

Boxes come from a Shapes layer (the selected shape, else the last one drawn), points from a Points layer
(those on the visible slice; a `label` feature of 0 marks a background point, as the reader's prompt
layers have)."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton

from ..choices import MASK_MODES
from ..decode.place import Tiles, prompt_mask
from ..decode.prompts_file import Prompt
from ..device import default_device
from ..errors import SamCacheError
from ..runs import load_decoder
from ..store.reader import CacheReader


class PromptWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._readers: dict[str, tuple[CacheReader, Tiles]] = {}
        self._decoders: dict[tuple[str, str], object] = {}
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.prompt = ComboBox(label="prompt", choices=self._prompt_layers)
        self.decoder = LineEdit(label="decoder", value="base", tooltip="base, a finetune run folder or a SAM .pth")
        self.mask_mode = ComboBox(label="mask mode", choices=MASK_MODES, value="auto")
        self.button = PushButton(text="Segment")
        self.status = Label(value="")
        self.button.changed.connect(self._clicked)
        for chosen in (self.image.changed, self.decoder.changed):  # open the cache and load the decoder when
            chosen.connect(self._prepare)  # chosen, so the first prompt is as quick as the next
        self._prepare()
        self.extend([self.image, self.prompt, self.decoder, self.mask_mode, self.button, self.status])
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda _: self.reset_choices())

    def _image_layers(self, _=None):
        return [layer for layer in self.viewer.layers if layer._type_string == "image" and _meta(layer)
                and "layer" not in _meta(layer)]

    def _prompt_layers(self, _=None):
        return [layer for layer in self.viewer.layers if layer._type_string in ("shapes", "points")]

    def _prepare(self, _=None):
        try:
            if self.image.value is not None:
                self._decoder_for(_meta(self.image.value)["cache"])
                self.status.value = ""
        except SamCacheError as e:
            self.status.value = str(e)

    def _decoder_for(self, cache: str):
        key = (cache, self.decoder.value.strip() or "base")
        if key not in self._decoders:
            self._decoders[key] = load_decoder(self._reader(cache)[0], key[1]).to(default_device()).eval()
        return self._decoders[key]

    def _clicked(self, _=None):
        try:
            _, score, _ = self.segment()
            self.status.value = f"decoded: predicted IoU {score:.3f}"
        except SamCacheError as e:
            self.status.value = str(e)

    def segment(self):
        """Decode the chosen prompt layer's prompt on the visible slice (of the visible source of a stack);
        returns the mask in its plane [H, W], its predicted IoU and the Labels layer it was painted into."""
        image, layer = self.image.value, self.prompt.value
        if image is None or layer is None:
            raise SamCacheError("choose a cache's image layer and a Shapes or Points layer holding the prompt")
        meta = _meta(image)
        reader, tiles = self._reader(meta["cache"])
        axis, lead = meta["slice_axis"], int(meta["stacked"])
        where = np.asarray(self.viewer.dims.point[-image.ndim:], np.float64)  # the visible plane, in data coords
        fixed = [0] * lead + ([lead + axis] if axis >= 0 else [])  # the stack's dim and the slice axis
        at = {d: int(round(where[d])) for d in fixed}
        source = meta["sources"][at[0] if lead else 0]
        z = at[lead + axis] if axis >= 0 else -1
        prompt = Prompt(1, str(source), z, *_geometry(layer, image.ndim, at, where), "", f"napari layer {layer.name!r}")
        mask, score, _ = prompt_mask(reader, self._decoder_for(meta["cache"]), prompt, self.mask_mode.value, tiles)
        labels = self._masks_layer(image, meta)
        plane = labels.data[tuple(at.get(d, slice(None)) for d in range(image.ndim))]  # a view of the plane
        plane[mask] = int(labels.data.max()) + 1
        labels.refresh()
        return mask, score, labels

    def _reader(self, cache: str):
        if cache not in self._readers:
            reader = CacheReader(cache)
            self._readers[cache] = (reader, Tiles(reader))
        return self._readers[cache]

    def _masks_layer(self, image, meta):
        name = f"{image.name} · samcache masks"
        if name not in self.viewer.layers:
            self.viewer.add_labels(np.zeros(image.data.shape[:-1] if image.rgb else image.data.shape, np.uint32),
                                   name=name, metadata={"samcache": {**meta, "masks": True}})
        return self.viewer.layers[name]


def _meta(layer) -> dict:
    return layer.metadata.get("samcache", {})


def _geometry(layer, ndim: int, at: dict[int, int], where: np.ndarray):
    """(box, points, labels) in plane pixels (x, y): the bounding box of a Shapes layer's selected shape on
    the visible plane (else its last one there), or a Points layer's points on it. `at`: the image's fixed
    dims (a stack's, a volume's slice axis) -> their visible index; a layer of fewer dims lies on every plane."""
    def image_dims(coords):  # a layer's coordinates as the image's dims
        c = np.atleast_2d(np.asarray(coords, np.float64))
        if c.shape[1] >= ndim:
            return c[:, -ndim:]
        return np.concatenate([np.broadcast_to(where[:ndim - c.shape[1]], (len(c), ndim - c.shape[1])), c], axis=1)

    def visible(c):  # which rows lie on the visible plane
        return np.all([np.round(c[:, d]) == v for d, v in at.items()], axis=0) if at else np.ones(len(c), bool)

    plane_dims = [d for d in range(ndim) if d not in at]
    if layer._type_string == "shapes":
        here = [k for k, shape in enumerate(layer.data) if visible(image_dims(shape)).all()]
        if not here:
            raise SamCacheError(f"the Shapes layer {layer.name!r} holds no shape on this plane: draw a box")
        chosen = [k for k in here if k in layer.selected_data]
        xy = image_dims(layer.data[(chosen or here)[-1]])[:, plane_dims][:, ::-1]
        return np.concatenate([xy.min(0), xy.max(0)]), None, None
    coords = image_dims(layer.data) if len(layer.data) else np.zeros((0, ndim))
    labels = np.asarray(layer.features["label"], np.int64) if "label" in layer.features else np.ones(len(coords), np.int64)
    on = visible(coords)
    if not on.any():
        raise SamCacheError(f"the Points layer {layer.name!r} holds no point on this plane: add one")
    return None, coords[on][:, plane_dims][:, ::-1], labels[on]
