"""Run plumbing: the run configuration, model and loader builders, passes over a loader, optimisation steps,
checkpoints, torchrun, the run folder and its figures."""
