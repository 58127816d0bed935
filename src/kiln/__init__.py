"""kiln: turn an open-source model into a fast, small, validated, monitored service."""

__version__ = "0.1.0"
