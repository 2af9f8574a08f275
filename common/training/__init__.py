"""Training: the Method protocol and the two model shapes, the generic trainer and probe evaluation,
optimizers (LARS, SGD, Adam), schedules, the EMA update, tf.distribute set-up, checkpoints,
metrics and progress, supervised fine-tuning."""
