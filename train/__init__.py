"""`python -m train`: command-line entry point for training (see `train.__main__`)."""
