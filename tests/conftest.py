"""Shared fixtures. Fixture bodies live in tests/_fixtures/, one module each."""

from _fixtures.classify_bundle import classify_build, tiny_classifier  # noqa: F401
from _fixtures.default_bundle import default_bundle  # noqa: F401
from _fixtures.tiny_bundle import tiny_bundle, tiny_bundle_factory  # noqa: F401
