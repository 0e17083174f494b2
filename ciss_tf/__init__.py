"""CiSS-Net (Context-Reinforced Semantic Segmentation) in TensorFlow 2 / Keras 3."""

from ciss_tf.tools import cli as _cli

# First thing, so that no module imports TensorFlow before its start-up lines are held back.
_cli.quiet_tensorflow_startup()
