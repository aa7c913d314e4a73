"""flashlab's kernels inside other frameworks: transformers (attn_implementation="flashlab")."""
