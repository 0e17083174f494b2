"""Stage 2's gradient with memory flat in T (`--backprop=per_step`).

One tape over the whole unroll (`--backprop=episode`) keeps every step's activations until
the backward pass: memory grows with T. But the unrolled steps of CiSS-Net share no gradient
path. `P_t` enters the Context Net through a stop-gradient softmax, `K_t` is an integer map,
and the rewards, returns and advantages are constants once the episode is known. The only
tensors that several steps read with a gradient are the Base Net's `logits_0` and the X
halves of the Bias and Context Nets' first convs (`CissNet.project_features`). So the
gradient of Eq. 7 (plus the cross-entropy of every step) is computed in three parts:

1. The shared tensors, once, under a tape kept to the end (their cost does not grow with T).
2. The episode, recorded without a tape: actions, context maps, p-maps, values, the
   bootstrap value `V_T`, then the rewards and returns.
3. For each step u = 0..T, on its own tape: `logits_u = logits_0 + bias_net(X, K_{u-1})`
   and its cross-entropy, and for u < T the Context Net on `P_u` with its policy, value and
   entropy terms against the recorded actions and returns. The gradients of the step's
   variables add up; those of the shared tensors add up too and go back through the Base
   Net and the first-conv projections once, at the end. A control dependency makes each
   step start after the previous step's backward pass, so only one step's activations
   live at a time.

Step u calls the Bias Net for `K_{u-1}`, then the Context Net for `P_u`: the order of the
recording pass. Resetting the nets' state variables (dropout seed states, batch-norm
moving statistics) to their values before the recording pass therefore replays the same
dropout masks; afterwards they are set to their values after the recording pass, so the
state moves exactly as one pass of `--backprop=episode` moves it. The gradient equals
the single tape's up to float rounding (the sums run in another order).
"""

import tensorflow as tf

from ciss_tf.modeling.ciss_net import stack_steps
from ciss_tf.training import losses
from ciss_tf.training.gradients import add_gradients, after


def _state_variables(model):
    """The non-trainable variables of the trained nets (dropout seeds, moving statistics)."""
    nets = [model.base_net, model.bias_net, model.context_net]
    return [v for net in nets if net is not None for v in net.non_trainable_variables]


def gradients(model, batch, variables, *, global_batch_size, num_steps, seed, loss, reward,
              ignore_label, scale_loss):
    """Eq. 7's terms and their gradients, one unrolled step at a time.

    Args:
      model: a `CissNet`.
      batch: this replica's batch (`image`, `label`, `sample_id`).
      variables: the trained variables, in the order of the returned gradients.
      global_batch_size: images in the global batch (the losses' reduction).
      num_steps: T.
      seed: the run's seed (the action noise).
      loss: the `LossConfig` (gamma, loss weights, reduction).
      reward: the `RewardConfig`.
      ignore_label: the dataset's ignore label.
      scale_loss: the loss scaling of mixed_float16 (identity otherwise).

    Returns:
      (terms, gradients): `losses.ciss_loss`'s dict of the episode and the gradients of
      `scale_loss(terms["total"])` with respect to `variables` (None where none flows).
    """
    labels = batch["label"]
    learned = model.context_net is not None
    x = model.features(batch["image"])
    with tf.GradientTape() as shared_tape:
        base_logits = model.base_net(x, training=True)
        # T = 0 reads no X half (as `CissNet.call`): those weights then get no gradient.
        bias_x, context_x = model.project_features(x) if num_steps else (None, None)
    shared = [base_logits, bias_x, context_x]
    state = _state_variables(model)
    before = [tf.identity(v) for v in state]

    # The episode, without a tape.
    base, bias_in, context_in = (None if t is None else tf.stop_gradient(t) for t in shared)
    logits, contexts, actions, values = [base], [], [], []
    for t in range(num_steps):
        policy_logits = None
        if learned:
            policy_logits, value = model.policy_and_value(context_in, logits[-1], True)
            values.append(value)
        action, context = model.act(t, logits[-1], policy_logits, sample=True,
                                    sample_ids=batch["sample_id"], seed=seed)
        contexts.append(context)
        actions.append(action)
        logits.append(base + model.bias_logits(bias_in, context, True))
    episode = {
        "logits": tf.stack(logits), "context": stack_steps(contexts, tf.int32, base),
        "actions": stack_steps(actions, tf.int32, base),
    }
    rewards = returns = None
    if learned:
        episode["values"] = tf.stack(values)
        episode["bootstrap_value"] = model.policy_and_value(context_in, logits[-1], True)[1]
        rewards, returns = losses.episode_returns(
            episode, labels, gamma=loss.gamma, reward=reward, ignore_label=ignore_label
        )
    # Reads and writes of one variable keep their program order in a `tf.function`.
    recorded = [tf.identity(v) for v in state]
    for variable, value in zip(state, before, strict=True):
        variable.assign(value)

    # Each step on its own tape, after the previous step's backward pass.
    step_gradients, shared_gradients, per_step = None, None, []
    dependencies = [episode["logits"], returns, *recorded]
    for u in range(num_steps + 1):
        acts = learned and u < num_steps
        # Every input of the step waits, also those read without the shared tensors (the
        # context map's and the p-map's encodings), or the executor runs those parts of all
        # steps at once and memory grows with T again.
        inputs = after(dependencies, [
            base, bias_in, context_in, logits[u],
            episode["context"][u - 1] if u > 0 else None,
            episode["actions"][u] if acts else None, returns[u] if acts else None,
        ])
        step_recorded_logits, step_context, step_actions, step_returns = inputs[3:]
        inputs = inputs[:3]
        with tf.GradientTape() as tape:
            tape.watch([t for t in inputs if t is not None])
            step_base, step_bias_x, step_context_x = inputs
            step_logits = step_base
            if u > 0:
                step_logits = step_base + model.bias_logits(step_bias_x, step_context, True)
            policy_logits = value = None
            if acts:
                policy_logits, value = model.policy_and_value(
                    step_context_x, step_recorded_logits, True
                )
            terms = losses.step_terms(
                step_logits, labels, global_batch_size=global_batch_size,
                reduction=loss.reduction, ignore_label=ignore_label,
                policy_logits=policy_logits, values=value, actions=step_actions,
                returns=step_returns,
            )
            scaled = scale_loss(
                losses.weighted_total(terms, lambda1=loss.lambda1, lambda2=loss.lambda2)
            )
        targets = [t for t in inputs if t is not None]
        grads = tape.gradient(scaled, list(variables) + targets)
        step_gradients = add_gradients(step_gradients, grads[: len(variables)])
        shared_gradients = add_gradients(shared_gradients, grads[len(variables):])
        per_step.append({name: tf.stop_gradient(v) for name, v in terms.items()})
        # The next step waits for the running sums, not just this step's gradients: then
        # each sum is done before the next step (one step's gradients alive at a time), and
        # Grappler cannot fuse the chain of additions into one AddN over every step's.
        dependencies = [g for g in step_gradients + shared_gradients if g is not None]

    for variable, value in zip(state, recorded, strict=True):
        variable.assign(value)
    targets = [t for t in shared if t is not None]
    output_gradients = [
        tf.zeros_like(t) if g is None else tf.cast(g, t.dtype)
        for t, g in zip(targets, shared_gradients, strict=True)
    ]
    grads = add_gradients(step_gradients, shared_tape.gradient(
        targets, list(variables), output_gradients=output_gradients
    ))
    all_terms = losses.episode_terms(
        per_step, episode, rewards, returns, global_batch_size=global_batch_size,
        lambda1=loss.lambda1, lambda2=loss.lambda2,
    )
    return all_terms, grads

