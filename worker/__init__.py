"""audience-purge: bulk, rate-limited, audited deletion of UnleashX campaign audiences."""

__version__ = "0.1.0"
