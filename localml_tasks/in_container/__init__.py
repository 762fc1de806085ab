"""Files that run inside the deployment's container, with the environment's own Python."""
