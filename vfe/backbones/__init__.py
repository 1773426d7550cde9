"""Backbones: LightningModules that turn preprocessed clips into feature vectors."""
