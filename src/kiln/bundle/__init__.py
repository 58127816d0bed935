"""The deployable directory: manifest, chosen artifact, tokenizer and model card."""
