"""The package version, kept in one place for build info and the OpenAPI document."""

__version__ = "0.1.0"
