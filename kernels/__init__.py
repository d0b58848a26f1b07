"""Custom GPU kernels (Triton), importable as selfseg_kernels; each has a torch fallback."""
