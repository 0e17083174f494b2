"""Evaluation: PSPNet's multi-scale / sliding-window protocol, mIoU per step, Cityscapes."""
