"""What a fetch raises when an integration cannot be read."""

from __future__ import annotations


class IntegrationError(Exception):
    """One integration failed; the rest of the cycle goes on. Never carries a secret."""
