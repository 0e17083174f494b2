"""Training: configs, tasks (what a stage trains), optimizers, the generic trainer."""
