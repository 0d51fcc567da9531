"""Training: autodiff-built step graphs, Keras-exact optimizers, losses, metrics, fit/evaluate."""
