"""Recipes (export, quantize, ...) that turn a model into variants, and the build that runs them."""
