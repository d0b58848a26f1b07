"""Sub-commands of the `selfseg-fast` CLI (one module each)."""
