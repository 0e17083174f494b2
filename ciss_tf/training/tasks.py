"""What each training stage trains, in the manner of Model Garden's `Task`.

A task owns the stage's model building, its initialisation on a fresh start, the forward
pass and loss of a training step, its learning-rate groups, the steps its periodic
evaluation scores, and how its terms and images are summarised. `trainer.Trainer` runs
any task under `tf.distribute` (step, checkpoints, resume, logging) without knowing which.

* `PSPNetTask` (stage 1): PSPNet with its auxiliary loss, one learning-rate group.
* `CissTask` (stage 2): CiSS-Net over a frozen feature net, the Eq. 7 loss of an
  unrolled episode, the Base Net at the base rate and the Bias Net / Context Net at the
  context rate(s).
"""

import numpy as np
import tensorflow as tf
from absl import logging

from ciss_tf.convert import imagenet
from ciss_tf.data import datasets, preprocessing
from ciss_tf.modeling import checkpoints, config, inference, ops
from ciss_tf.training import losses, per_step
from ciss_tf.training.optimizers import VariableGroup

_IMAGENET_DEPTHS = {"resnet50": 50, "resnet101": 101}


class Task:
    """The parts of a stage the generic trainer calls.

    Args:
      cfg: the run's `TrainConfig`.
      info: the dataset's `DatasetSpec`.
    """

    # Terms that are statistics, not loss terms (TensorBoard `rl/` instead of `loss/`).
    statistics = ()
    # Whether `image_panel` draws anything (the trainer then reads a preview image).
    has_image_panel = False

    def __init__(self, cfg, info):
        if cfg.base_init == "pspnet" and (cfg.model.stage != "ciss" or not cfg.init_checkpoint):
            raise ValueError(
                "--base_init=pspnet needs --stage=ciss and --init_checkpoint (the stage-1 "
                "PSPNet whose head starts the Base Net)"
            )
        self.cfg = cfg
        self.info = info

    def build_model(self):
        """The stage's model with every variable created (call under the strategy scope)."""
        return config.build_model(self.cfg.model, self.info.num_classes, self.cfg.data.crop_size)

    def initialize(self, model):
        """Initialises a freshly built model (not called when a run resumes)."""

    def variable_groups(self, model):
        """The `VariableGroup`s trained, each with its own optimizer (SPEC.md section 5)."""
        raise NotImplementedError

    def forward(self, model, batch, training):
        """The model's outputs on a training batch."""
        raise NotImplementedError

    def loss(self, outputs, labels, global_batch_size):
        """A dict of float32 scalars with the loss to minimise as `total`."""
        raise NotImplementedError

    def gradients(self, model, batch, variables, global_batch_size, scale_loss):
        """The loss terms of a replica's batch and the gradients of `scale_loss(total)`.

        One tape over the forward pass and the loss (replica context).
        """
        with tf.GradientTape() as tape:
            outputs = self.forward(model, batch, training=True)
            terms = self.loss(outputs, batch["label"], global_batch_size)
            scaled = scale_loss(terms["total"])
        return terms, tape.gradient(scaled, variables)

    @property
    def eval_steps(self):
        """The steps t the periodic evaluation scores."""
        return [0]

    def image_panel(self, model, preview):
        """Rows of a TensorBoard image of the eval batch `preview` (`has_image_panel`)."""
        raise NotImplementedError

    def summary_tag(self, name):
        """The TensorBoard tag of the term `name`."""
        return f"{'rl' if name in self.statistics else 'loss'}/{name}"


class PSPNetTask(Task):
    """Stage 1: PSPNet (optionally from Keras ImageNet weights), main + auxiliary loss."""

    def initialize(self, model):
        path = self.cfg.imagenet_weights
        if not path:
            return
        depth = _IMAGENET_DEPTHS.get(self.cfg.model.preset)
        if depth is None:
            raise ValueError(
                f"--imagenet_weights needs --preset=resnet50|resnet101, not "
                f"{self.cfg.model.preset}"
            )
        imagenet.load_keras_resnet_weights(model.feature_net.backbone, path, depth=depth)
        logging.info("Backbone initialised from ImageNet weights %s", path)

    def variable_groups(self, model):
        rate = self.cfg.optimizer.base_learning_rate
        return [VariableGroup("base", tuple(model.trainable_variables), rate)]

    def forward(self, model, batch, training):
        return model(batch["image"], training=training)

    def loss(self, outputs, labels, global_batch_size):
        return losses.pspnet_loss(
            outputs, labels, global_batch_size=global_batch_size,
            ignore_label=self.info.ignore_label, reduction=self.cfg.loss.reduction,
        )


class CissTask(Task):
    """Stage 2: CiSS-Net unrolled `unroll_steps` steps, the Eq. 7 loss."""

    statistics = ("kept_fraction", "reward", "return", "value_estimate", "policy_entropy")
    has_image_panel = True

    def initialize(self, model):
        if not self.cfg.init_checkpoint:
            logging.warning("No --init_checkpoint: the frozen feature net keeps random weights.")
            return
        path = checkpoints.restore_feature_net(model, self.cfg.init_checkpoint)
        logging.info("Feature net initialised from %s", path)
        if self.cfg.base_init == "pspnet":
            checkpoints.restore_base_net_from_pspnet_head(model, path)
            logging.info("Base Net conv and classifier initialised from the head of %s", path)

    def variable_groups(self, model):
        """The Base Net at the base rate; the rest (Bias Net, Context Net) at the context rate.

        With a Context Net rate of its own, the Context Net is a third group. With T = 0
        only the Base Net: the others get no gradient, so they have no optimizer and are
        neither updated nor decayed (they stay as initialised, like the unused weights of
        the paper's Baseline).
        """
        rates = self.cfg.optimizer
        base = tuple(model.base_net.trainable_variables)
        groups = [VariableGroup("base", base, rates.base_learning_rate)]
        if self.cfg.unroll_steps == 0:
            return groups
        taken = {id(v) for v in base}
        separate = rates.context_net_learning_rate is not None and model.context_net is not None
        if separate:
            context_net = tuple(model.context_net.trainable_variables)
            taken |= {id(v) for v in context_net}
        rest = tuple(v for v in model.trainable_variables if id(v) not in taken)
        groups.append(VariableGroup("context", rest, rates.context_learning_rate))
        if separate:
            groups.append(
                VariableGroup("context_net", context_net, rates.context_net_learning_rate)
            )
        return groups

    def forward(self, model, batch, training):
        return model(
            batch["image"], training=training, num_steps=self.cfg.unroll_steps,
            sample_ids=batch["sample_id"], seed=self.cfg.seed,
        )

    def loss(self, outputs, labels, global_batch_size):
        return losses.ciss_loss(
            outputs, labels, global_batch_size=global_batch_size, loss=self.cfg.loss,
            reward=self.cfg.reward, ignore_label=self.info.ignore_label,
        )

    def gradients(self, model, batch, variables, global_batch_size, scale_loss):
        """`Task.gradients`, or with `--backprop=per_step` one step at a time (same value)."""
        if self.cfg.backprop == "episode":
            return super().gradients(model, batch, variables, global_batch_size, scale_loss)
        return per_step.gradients(
            model, batch, variables, global_batch_size=global_batch_size,
            num_steps=self.cfg.unroll_steps, seed=self.cfg.seed, loss=self.cfg.loss,
            reward=self.cfg.reward, ignore_label=self.info.ignore_label, scale_loss=scale_loss,
        )

    @property
    def eval_steps(self):
        return sorted({0, 2, self.cfg.unroll_steps})

    def image_panel(self, model, preview):
        """Per step t: input | ground truth | p-map | context map (uncertain white)."""
        steps = self.cfg.unroll_steps
        # The labels evaluation scores (the one inference path), for the first image.
        images = preview["image"][:1]
        outputs = inference.segment(
            model, preprocessing.rescale_images(images, self.cfg.input_scale), steps,
            size=ops.spatial_size(images),
        )
        palette = self.info.palette
        image = preprocessing.denormalize_image(preview["image"])[0].numpy()
        label = datasets.colorize(preview["label"][0].numpy(), palette)
        rows = []
        for t in range(steps + 1):
            pmap = datasets.colorize(outputs["labels"][t][0].numpy(), palette)
            if t < steps:
                context = outputs["context"][t][0].numpy()
                context_rgb = datasets.colorize(context - 1, palette, context == 0)
            else:
                context_rgb = np.zeros_like(pmap)
            rows.append(np.concatenate([image, label, pmap, context_rgb], axis=1))
        return np.stack(rows)


def make_task(cfg, info):
    """The task of `cfg.model.stage`."""
    return {"pspnet": PSPNetTask, "ciss": CissTask}[cfg.model.stage](cfg, info)
