"""Tasks: what a model does, its input/output schema, pre/post-processing and quality metric."""
