"""The deployment: controller, node registry, lifecycle, gateway, client, metrics."""
