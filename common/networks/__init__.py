"""Networks as plain tf.Modules: layers and BatchNorm semantics, the ResNet family, MLP heads, probes."""
