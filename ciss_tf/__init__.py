"""CiSS-Net (Context-Reinforced Semantic Segmentation) in TensorFlow 2 / Keras 3.

The top level holds what users call: the commands (`python -m ciss_tf.train`, `evaluate`,
`predict`, `export`, `demo`, `benchmark`) and the paper's math (`rl`, `metrics`). The library
is in the subpackages: `modeling`, `training`, `data`, `evaluation`, `serving`, `convert`,
`tools`.
"""

from ciss_tf.tools import cli as _cli

# First thing, so that no module imports TensorFlow before its start-up lines are held back.
_cli.quiet_tensorflow_startup()
