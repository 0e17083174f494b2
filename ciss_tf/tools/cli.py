"""What every command does at its edge: a quiet TensorFlow start-up and a useful `--help`.

`quiet_tensorflow_startup` runs when the package is imported (`ciss_tf/__init__.py`), before
any module imports TensorFlow. `list_flags_in_help` is called by each command's entry point;
`check_local_output` by the library functions that write a tool's output. Importing this
module imports neither TensorFlow nor absl, so any module may import it.
"""

import os
import sys
import tempfile


def quiet_tensorflow_startup():
    """Imports TensorFlow with its C++ start-up lines (oneDNN, CUDA probing) held back.

    TensorFlow 2.21 writes those lines to the stderr file descriptor before its log level
    applies, so they open every command's output and bury its own. They are written to a
    temporary file instead, and replayed if the import fails. `TF_CPP_MIN_LOG_LEVEL=2`
    keeps TensorFlow's later INFO and WARNING lines out as well (errors still show).
    A user who sets `TF_CPP_MIN_LOG_LEVEL` (e.g. to 0) asks for all of it: then nothing is
    held back.
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow as tf  # noqa: PLC0415  (the point of this function)

            # Listing the devices probes CUDA now, with its lines held back, and leaves the
            # runtime uninitialised (logical CPU devices can still be configured).
            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def list_flags_in_help(*modules):
    """Makes `--help` list the key flags of `modules` (module names; "__main__" works).

    absl's `--help` lists the key flags of the module named by `sys.argv[0]`. Under
    `python -m` that is the command's own module, but an installed console script
    (`ciss-train`) is a generated file that defines no flag, and shared flags (`--preset`,
    `--dataset`) live in `ciss_tf.tools.command_flags` either way. Declaring them key flags of
    `sys.argv[0]` lists them all, under the first module's docstring as the usage text.
    """
    from absl import flags  # noqa: PLC0415  (keeps this module light for the package import)

    main = sys.modules["__main__"]
    if not main.__doc__ and modules:
        # absl's usage text is __main__'s docstring: the command's, not the script's.
        main.__doc__ = sys.modules[modules[0]].__doc__
    flag_values = flags.FLAGS
    for module in modules:
        for flag in flag_values.get_key_flags_for_module(module):
            flag_values.register_key_flag_for_module(sys.argv[0], flag)


def check_local_output(path, flag):
    """Raises ValueError naming `flag` when the output `path` is a URL (gs://, s3://, ...).

    The tools commit what they write with a local rename (TF Serving never sees half a
    version; a report is whole or absent). Object stores have no atomic rename, and Python's
    `os` functions would take `gs://bucket/x` for a local folder named `gs:`: a run would
    seem to succeed and leave its output next to the working directory.
    """
    if path and "://" in path:
        raise ValueError(
            f"{flag}={path}: outputs are written to local paths only (committed by a local "
            "rename); write locally, then copy (e.g. gsutil -m cp -r)"
        )
