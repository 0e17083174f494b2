r"""Imports the official PSPNet weights (Caffe) into a stage-1 PSPNet checkpoint.

    python -m ciss_tf.convert.import_pspnet --flagfile=experiments/ade20k_pspnet.flags \
        --weights=pspnet50_ADE20K.caffemodel --output=runs/pspnet50_ade20k/imported

The model is the PSPNet the flags describe (`--preset`, `--dataset`, `--stem` must be
`deep`); the checkpoint (the prefix `--output`) is what stage 1 writes, so stage 2 takes it
as `--init_checkpoint`. Formats, mapping and checks: `ciss_tf.convert.pspnet_weights`.
"""

import os

from absl import flags

from ciss_tf.convert import pspnet_weights
from ciss_tf.data import datasets
from ciss_tf.modeling import checkpoints, config
from ciss_tf.tools import command_flags

FLAGS = flags.FLAGS


def define_flags():
    """Defines the flags of this tool (done by `run`, so importing defines none)."""
    flags.DEFINE_string(
        "weights", None, "Official PSPNet weights: a .caffemodel or the NumPy dict (.npy)."
    )
    flags.DEFINE_string(
        "output", None,
        "Checkpoint prefix to write (e.g. runs/pspnet50_ade20k/imported); pass the same "
        "prefix to --init_checkpoint or --checkpoint.",
    )


def import_checkpoint(model_config, dataset, weights, output):
    """The tool without its flags: converts `weights`, writes the checkpoint `output`.

    Prints the mapping report and the prefix written.

    Args:
      model_config: the stage-1 `config.ModelConfig` (its preset and stem).
      dataset: dataset name (its number of classes).
      weights: a .caffemodel or the original's NumPy dict (.npy).
      output: checkpoint prefix to write.

    Returns:
      The `pspnet_weights.ImportReport`.

    Raises:
      ValueError: unreadable, missing or mis-shaped weights, or `output` is a folder;
        nothing is written then.
    """
    if os.path.isdir(output):
        raise ValueError(
            f"--output={output} is a directory; give a checkpoint prefix inside it "
            f"(e.g. {os.path.join(output, 'imported')})"
        )
    info = datasets.get_dataset_info(dataset)
    loaded, stride_on = pspnet_weights.read_weights(weights)
    model = config.build_model(model_config, info.num_classes)
    report = pspnet_weights.import_weights(model, loaded, weights, stride_on)
    parent = os.path.dirname(output)
    if parent:
        os.makedirs(parent, exist_ok=True)
    prefix = checkpoints.save_model(model, output)
    print("\n".join(report.lines()))
    print(f"wrote {prefix} ({model_config.preset}, {info.num_classes} classes of {info.name})")
    return report


def import_from_flags():
    """The tool: reads `--weights`, writes the checkpoint `--output`, prints the report."""
    for name in ("weights", "output"):
        if not getattr(FLAGS, name):
            raise ValueError(f"--{name} is required")
    return import_checkpoint(
        command_flags.model_config("pspnet"), FLAGS.dataset, FLAGS.weights, FLAGS.output
    )


def run():
    """Console entry point."""
    command_flags.run_tool(define_flags, import_from_flags)


if __name__ == "__main__":
    run()
