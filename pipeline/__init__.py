"""The batch pipeline: random streams, augmentation, multi-class reduction, loader samples -> device batches,
the built-in synthetic data and the frozen encoder's embedding cache."""
