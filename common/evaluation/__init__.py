"""Evaluations of a trained encoder: offline linear evaluation on frozen features."""
