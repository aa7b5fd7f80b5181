"""The simulated user and the round engine: what a mode is, the registry of modes, clicks, raters, k-means,
training rounds, validation rounds and the baselines."""
