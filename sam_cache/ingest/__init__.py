"""Sources -> tiles: find a dataset's files, read them, validate labels, scale intensities, cut tiles."""
