"""The cache schema: every Zarr variable, its dimensions, dtype and codecs, named once, here.

    embedding (sample, channel, y, x)        float16 (or float32), one sample per chunk, sharded; with
                                             `embed --store int8`: int8, and embedding_scale/embedding_offset
                                             (sample, channel) float32 beside it (store/lossy.py)
    image     (sample, height, width, rgb)   uint8, the tile as fed to the encoder (zero padded)
    label     (sample, height, width)        int32 object/class ids, or 0/1 for binary labels
    coordinates on `sample`: source, slice, y0, x0, valid_h, valid_w, objects, done (+ view, view_of with views)
    a table on `source`: source_path, label_paths, source_sha256, source_shape, slice_axis, intensity_lo/hi,
    and mask_class (source, mask) for one-object mask files

Every module reads and writes these names through the constants below, never as string literals.
Format 2 adds a CRC32C checksum to every chunk (and zarr's sharding keeps one on every shard index);
format 1 caches, written without, still open.
"""

from __future__ import annotations

from zarr.codecs import BloscCodec, Crc32cCodec

FORMAT = 2
READABLE_FORMATS = (1, 2)
ATTRS = "samcache"  # the group attribute holding the fingerprint and what made the cache

# dimensions
SAMPLE, SOURCE_DIM, MASK_DIM = "sample", "source", "mask"

# per-sample arrays, written a whole shard at a time
EMBEDDING, IMAGE, LABEL = "embedding", "image", "label"
EMBEDDING_SCALE, EMBEDDING_OFFSET = "embedding_scale", "embedding_offset"  # int8 caches only: value = q·scale + offset
DIMS = {
    EMBEDDING: (SAMPLE, "channel", "y", "x"),
    EMBEDDING_SCALE: (SAMPLE, "channel"),
    EMBEDDING_OFFSET: (SAMPLE, "channel"),
    IMAGE: (SAMPLE, "height", "width", "rgb"),
    LABEL: (SAMPLE, "height", "width"),
}
SHARDED = (EMBEDDING, IMAGE, LABEL, EMBEDDING_SCALE, EMBEDDING_OFFSET)  # those a cache has

# per-sample coordinates, each one small chunk
SOURCE, SLICE, Y0, X0, VALID_H, VALID_W, OBJECTS = "source", "slice", "y0", "x0", "valid_h", "valid_w", "objects"
SAMPLE_COORDS = (SOURCE, SLICE, Y0, X0, VALID_H, VALID_W, OBJECTS)
# stored views (`embed --views`, ingest/views.py), only in caches made with views: `view` (str: identity, flip-h,
# ...) and `view_of` (the sample of its identity view; itself for that one). A view keeps its original's
# source/slice/y0/x0; valid_h/valid_w are its own (rot90 swaps them). Caches without them hold identity views only.
VIEW, VIEW_OF = "view", "view_of"
VIEW_COORDS = (VIEW, VIEW_OF)
DONE = "done"  # commit flags: a sample is valid once its shard's flags are set, after its data
SPLIT = "split"  # optional per-sample "train"/"val"/"test", added by the user

# the source table
SOURCE_PATH, LABEL_PATHS, SOURCE_SHA256, SOURCE_SHAPE = "source_path", "label_paths", "source_sha256", "source_shape"
SLICE_AXIS, INTENSITY_LO, INTENSITY_HI, MASK_CLASS = "slice_axis", "intensity_lo", "intensity_hi", "mask_class"
LINKS = "links"  # JSON list of "path -> resolved path" for each of a source's files read through a symlink

# Image and label chunks: tiles of at most this side within each sample (a sample is still written whole, in
# its shard). A small tile on a large mixed-size canvas then reads only its own chunks, not the padding.
PIXEL_CHUNK = 256


def pixel_chunks(shape: tuple) -> tuple:
    """The inner chunk of one sample of an image ([H, W, 3]) or label ([H, W]) array on this canvas."""
    return (1, *(min(d, PIXEL_CHUNK) for d in shape[:2]), *shape[2:])


def pixel_shards(shape: tuple, samples: int) -> tuple:
    """The shard of `samples` samples of a pixel array: the canvas rounded up to whole inner chunks (zarr
    needs a shard to hold whole chunks; the chunks past the canvas are never written, so they cost nothing)."""
    chunks = pixel_chunks(shape)
    return (samples, *(-(-d // c) * c for d, c in zip(shape[:2], chunks[1:3])), *shape[2:])


# Blosc zstd-1 with bit-shuffle, measured on embeddings of real EM tiles (benchmarks/codecs.py); then a
# checksum of the compressed bytes, so a flipped bit is an error, never a silently wrong value.
EMBEDDING_CODECS = (BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"), Crc32cCodec())
PIXEL_CODECS = (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec())
SMALL_CODECS = (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec())


def label_layer(layer: str | None = None) -> str:
    """The variable of a label layer: `label` for the ground truth, `label_<layer>` for others."""
    return LABEL if layer in (None, "", LABEL) else f"{LABEL}_{layer}"


def layer_name_ok(name: str) -> bool:
    """A label layer's name: letters, digits, - and _, and not the ground truth's."""
    return bool(name) and name.replace("_", "").replace("-", "").isalnum() and label_layer(name) != LABEL
