"""samcache in napari (`pip install samcache[napari]`): a reader that opens a cache (its sources put back
together from their tiles, ground truth, label layers and prompts, read lazily) and the output folders of
`segment` and `predict`, and a widget that decodes a box or point prompt on the visible slice from the
cached embedding, with the base decoder or a finetune run. napari finds both through napari.yaml."""
