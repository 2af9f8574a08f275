"""Input data: datasets by name (TFDS, built-in Fashion-MNIST), two-view and eval pipelines, and
every augmentation op as a pure function of an image and explicit random decisions."""
