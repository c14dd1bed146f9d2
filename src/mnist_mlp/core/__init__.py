"""Core training: the model, the training loop, augmentation, evaluation, checkpoints."""
