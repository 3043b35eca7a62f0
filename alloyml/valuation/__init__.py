"""Data valuation: which training rows help and which hurt (Shapley family, KNN-Shapley, Data-OOB,
pipeline-aware values, TracIn and influence functions). A library: arrays and estimators in, result
dataclasses out; it never touches the store."""
