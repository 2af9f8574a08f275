"""Checkpoints from elsewhere and models for use elsewhere: the original release's checkpoints,
feature extraction from any supported checkpoint, and SavedModel export."""
