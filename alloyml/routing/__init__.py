"""Routing between models: FrugalGPT cascades with budgeted thresholds, learned routers, model adapters and
Ray Serve deployment. A library; side effects (request logs) go through callbacks."""
