"""The valid values of every string option, one list each, in a module that imports nothing heavy: the
CLI builds its help from here in a fraction of a second, and each owner checks against the same list
(`options.choice`)."""

PROMPTS = ("box", "box-jitter", "box-larger", "center-point", "random-point", "random-3-points", "points-neg",
           "box+point", "none")  # decode.prompts registers exactly these
SEMANTIC = "none"  # the prompt-free strategy: one target per tile, the union of its objects
# entry point groups through which an installed package adds prompt strategies and model types (sam_cache.plugins),
# and the registries that hold them
PROMPT_PLUGINS, MODEL_PLUGINS = "samcache.prompts", "samcache.models"
PROMPT_REGISTRY, MODEL_REGISTRY = "sam_cache.decode.prompts", "sam_cache.registry"
# every option a prompt strategy accepts, with its default, and its valid range (lowest value, what it means)
PROMPT_OPTIONS = {"jitter": 0.1, "margin": 5, "n_pos": 1, "n_neg": 1, "neg_margin": 10}
PROMPT_LIMITS = {"jitter": (0, "a fraction (< 1) or pixels"), "margin": (0, "pixels"), "n_pos": (1, "points"),
                 "n_neg": (0, "points"), "neg_margin": (1, "pixels")}
DEFAULT_PROMPTS = ("box", "box-larger", "center-point", "random-point", "random-3-points")
# auto: the mask output the model was trained to give (its registry entry's mask_mode); single: SAM's single-mask
# output; best-iou: the best of 3 by predicted IoU
MASK_MODES = ("auto", "single", "best-iou")
# the built-in --model types (sam_cache.registry builds them; sam_cache.register_model adds more)
MODEL_TYPES = ("vit_h", "vit_l", "vit_b", "vit_t", "lite_medsam", "tiny")
PREPROCESS = ("sam", "medsam")  # how a model's input is prepared (encode.preprocess.POLICIES)
LABEL_KINDS = ("auto", "binary", "instance", "class")
INTENSITY_MODES = ("auto", "none", "minmax", "percentile", "window")
DTYPES = ("float16", "float32")
STORES = ("exact", "bitround:K", "int8")  # embed --store: how embeddings are kept (store/lossy.py)
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 on a GPU, fp32 on a CPU
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")
SPLITS = ("source", "slice", "tile", "column")  # finetune: how validation is held out
PRELOADS = ("auto", "device", "host", "off")  # finetune: where the samples live while training
EVAL_SPLITS = ("all", "train", "val")
ABLATE_SPLITS = ("auto", "all", "train", "val")
GROUPINGS = ("class", "source", "sample")  # evaluate --per
# evaluate: each object of each tile; each object of an image whole across its tiles (scoring.stitched); each
# object of a volume in 3D (scoring.volume)
SCORINGS = ("object", "image", "volume")
PROPAGATE = "propagate"  # evaluate --per volume --prompt propagate: the middle slice's prompt carried through
PROPAGATE_FROM = ("box", "center-point")  # how propagation prompts the middle slice
TOLERANCE_MM = 2.0  # evaluate --per volume: the surface Dice's tolerance
MIN_AREA = 10  # objects smaller than this (pixels) are neither trained on nor scored, unless told otherwise
AMG_OUTPUT_MODES = ("coco_rle", "uncompressed_rle", "binary_mask")  # segment: the JSON's `segmentation`
# embed --views: transforms of each tile stored as extra samples (ingest.views); identity is the tile itself
VIEWS = ("identity", "flip-h", "flip-v", "rot90", "rot180", "rot270")
TRAIN_VIEWS = ("identity", "random")  # finetune --views: the tile itself, or one stored view drawn per epoch
EVAL_VIEWS = ("identity", "all")  # evaluate --views: the tile itself, or every stored view (test-time augmentation)
