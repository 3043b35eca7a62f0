"""Tuning: Ray Tune hyperparameter search, prompt search (APE), the DSPy bridge and budgeted inference
tuning (EcoOptiGen-style). A library; trials are recorded by the workflow layer."""
