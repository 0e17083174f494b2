"""Gradients of one update: a task's loss on micro-batches, summed (`--grad_accum_steps`).

`accumulate` splits a replica's batch into `N` micro-batches, computes the task's terms and
gradients on each in turn and adds them up. The losses are reduced by the global batch of
the whole update (`losses`), so the sum is the gradient of the whole batch: the update of
one `N`-times batch (exactly for per-image norms such as GroupNorm; batch norm sees a
micro-batch's statistics, as it sees one GPU's). A control dependency starts each
micro-batch after the previous one's gradients are added up, so one micro-batch's
activations and gradients live at a time.
"""

import tensorflow as tf


def after(dependencies, tensors):
    """`tensors` (None entries pass through) computed only once `dependencies` exist."""
    dependencies = [d for d in dependencies if d is not None]
    with tf.control_dependencies(dependencies):
        return [None if t is None else tf.identity(t) for t in tensors]


def add_gradients(total, gradients):
    """Element-wise sum of two gradient lists (None: no gradient; `total` None: none yet)."""
    if total is None:
        return list(gradients)
    return [a if b is None else b if a is None else a + b
            for a, b in zip(total, gradients, strict=True)]


def accumulate(gradient_fn, batch, micro_batches):
    """The terms and gradients of `batch` as the sum over `micro_batches` parts.

    Args:
      gradient_fn: `batch -> (terms, gradients)`, a dict of scalars reduced by the global
        batch of the update, and a list of gradients (None where none flows).
      batch: a dict of tensors, batch-major, whose batch `micro_batches` divides.
      micro_batches: the number of parts `N`.

    Returns:
      (terms, gradients), each summed over the parts.
    """
    if micro_batches == 1:
        return gradient_fn(batch)
    names = list(batch)
    parts = [tf.split(batch[name], micro_batches) for name in names]
    terms, gradients, dependencies = None, None, []
    for i in range(micro_batches):
        micro = dict(zip(names, after(dependencies, [part[i] for part in parts]), strict=True))
        micro_terms, micro_gradients = gradient_fn(micro)
        gradients = add_gradients(gradients, micro_gradients)
        terms = micro_terms if terms is None else {
            name: value + micro_terms[name] for name, value in terms.items()
        }
        # Waiting for the running sums (not just this part's gradients) keeps one part's
        # gradients alive at a time: Grappler cannot fuse the additions into one AddN.
        dependencies = [g for g in gradients if g is not None]
    return terms, gradients
