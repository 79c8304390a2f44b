"""cartd: finds abandoned carts and delivers them, signed and durably, to a recovery webhook."""

__version__ = "0.1.0"
