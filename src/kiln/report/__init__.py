"""Human views of measured results: terminal tables, model cards."""
