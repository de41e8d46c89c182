"""The model families, a folder each: the code a saved model carries, and nothing else."""
