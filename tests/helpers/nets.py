"""Tiny CiSS-Nets built for the tests."""


def varied_tiny_net(num_classes):
    """A random tiny CiSS-Net whose predictions vary over the image at every step.

    Untrained, one class wins almost everywhere. Centring the Base Net's logits and the
    policy on a probe image and shrinking the Bias Net's output spreads the classes and keeps
    about half of the pixels as context.
    """
    import keras  # noqa: PLC0415  (after conftest has set the environment)
    import tensorflow as tf  # noqa: PLC0415

    from ciss_tf.modeling import config  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    net = config.build_ciss_net(num_classes, "tiny")
    probe = tf.random.stateless_normal([1, 37, 53, 3], seed=[0, 1], stddev=60.0)
    net(probe, num_steps=1)
    net.bias_net.classifier.kernel.assign(net.bias_net.classifier.kernel * 0.1)
    for bias, output in ((net.base_net.classifier.bias, "logits"),
                         (net.context_net.policy_head.bias, "policy_logits")):
        mean = tf.reduce_mean(net(probe, num_steps=1)[output][0], axis=[0, 1, 2])
        bias.assign(bias - mean)
    return net
