"""How cartd finds a person's carts again without keeping who they are (README
"Personal data"): keyed BLAKE2b hashes of the email and of the platform's customer id,
under a random key kept in the database and shared by every instance."""

from __future__ import annotations

import hashlib

KEY_BYTES = 16  # 128-bit hashes: collisions are out of reach for any store


class SubjectKeys:
    """Hashes one key at a time; the keyed states are made once and copied per hash."""

    def __init__(self, key: bytes) -> None:
        self._email = hashlib.blake2b(key=key, digest_size=KEY_BYTES, person=b"cartd-email")
        self._customer = hashlib.blake2b(key=key, digest_size=KEY_BYTES,
                                         person=b"cartd-customer")

    def email(self, email: str | None) -> bytes | None:
        """The hash of an email, whatever its case or surrounding blanks."""
        if not email:
            return None
        state = self._email.copy()
        state.update(email.strip().lower().encode())
        return state.digest()

    def customer(self, customer_id: str | None) -> bytes | None:
        """The hash of a platform customer id (unique within one integration)."""
        if not customer_id:
            return None
        state = self._customer.copy()
        state.update(customer_id.encode())
        return state.digest()
