"""Loss terms shared by several objectives: tensor checks, l2-normalisation, the regression loss,
InfoNCE with masked self-similarity and contrastive metrics. Pure functions of tensors."""
