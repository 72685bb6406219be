"""Run in the peers' venv by test_metrics_elf.py: python-elf's `mean_segmentation_accuracy` (mSA, SA50, SA75)
of each (prediction, truth) pair of .npy files that PAIRS.json lists, written to OUT.json."""

import json
import sys

import numpy as np
from elf.evaluation import mean_segmentation_accuracy

out = []
for pred, true in json.load(open(sys.argv[1])):
    msa, sa = mean_segmentation_accuracy(np.load(pred), np.load(true), return_accuracies=True)
    out.append([float(msa), float(sa[0]), float(sa[5])])
json.dump(out, open(sys.argv[2], "w"))
