"""Build stage: the float InceptionV3 (TF-slim's definition), its weights and training."""
