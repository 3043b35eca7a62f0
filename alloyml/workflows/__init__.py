"""Durable multi-step workflows on Ray tasks plus the metadata store: the only glue between the libraries
and the platform. Steps' states, attempts, timings and outputs are recorded so a workflow can resume."""
