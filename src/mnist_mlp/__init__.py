"""MNIST MLP: a DVC pipeline with every run in MLflow."""
__version__ = "0.1.0"
