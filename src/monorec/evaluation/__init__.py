"""Per-canvas evaluation: metrics, request sets, recommenders (the model and baselines), reports, gate."""
