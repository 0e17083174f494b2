"""Training: configs, tasks (what a stage trains), losses, optimizers, the generic trainer."""
