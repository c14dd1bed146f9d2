"""Data: MNIST's files, checked, and the cached tensors the stages share."""
