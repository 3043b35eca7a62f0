"""Sequence-mixing ops, one folder per op: a float32 naive recurrence (ground truth), a chunked PyTorch
form (CPU), Triton kernels (GPU) and a token-by-token step for decoding."""
