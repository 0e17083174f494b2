"""Converters from the raw datasets to the TFRecord shards that ciss_tf reads."""

from ciss_tf.tools import cli as _cli

# Before build_tfrecords imports TensorFlow (see ciss_tf.tools.cli).
_cli.quiet_tensorflow_startup()
