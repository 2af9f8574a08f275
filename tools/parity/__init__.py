"""The BYOL parity check against stored outputs of DeepMind's JAX reference (command line:
tools/parity_check.py; what is compared and why the tolerances hold: tools/PARITY.md).

  tolerances              Tol, the bounds, compare(), and the verdict rule for ill-conditioned
                          chained comparisons (chained_tolerance, SPREAD_FACTOR)
  golden                  the golden npz, its manifest and the optional float64 ResNet file
  records                 Row and GroupRun: the comparisons, inputs and skipped arrays of a group
  losses_schedules_lars   groups a, b, c
  augmentations           group d (with the JAX key's decisions through tools/jax_prng.py)
  resnet_forward          group e
  training_steps          group f: the training-step replay (chained, restarted), the float32
                          spread, and the verdicts
  runner                  the group table, run_group, run_checks, select_groups
  report                  the printed report and the overall verdict
"""
