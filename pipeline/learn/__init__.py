"""The learning stack: datasets, paired augmentations, losses, metrics, in-memory prediction, evaluation, training."""
