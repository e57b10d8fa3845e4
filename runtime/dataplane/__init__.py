"""The data plane: node hosts and workers, channels, messages, alignment, stats."""
