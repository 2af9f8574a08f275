"""The Conditional Entropy Bottleneck on the sphere: the von Mises-Fisher distribution (log-normaliser,
log-density, reparameterised sampler), the residual-information term, and the CEB settings block."""
