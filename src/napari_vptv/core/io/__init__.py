"""Files: reading images and masks, intensity scaling, TIFF stacks, label writing,
the output guard and the bundled samples."""
