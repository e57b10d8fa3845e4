"""Checkpoints: the store of snapshots and manifests, and the coordinator of a region."""
