"""Running segmentations over many inputs: files and folders, stacks slice by slice,
dask, and the memory check made before the work starts."""
