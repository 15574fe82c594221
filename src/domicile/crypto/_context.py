"""`Context`: what a ciphertext is bound to (region, tenant, kind, record id).

Every seal and open takes one, and its canonical encoding is part of the AEAD associated data,
so a ciphertext copied to another record, kind, tenant or region does not decrypt (G5).

The encoding is computed once, when the context is built, because `seal`/`open` run on the hot
path and a context is typically built once per record operation anyway:

    u16be len(region) | u16be len(tenant) | u16be len(kind) | u16be len(record_id)
    | region | tenant | kind | record_id            (each field UTF-8)

Lengths first, then the fields: unambiguous for any field content (no separator to forbid),
and trivial to reproduce in another language.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = ["Context"]

_MAX_FIELD = 0xFFFF  # the length prefix is 16 bits
_pack = struct.pack


@dataclass(frozen=True, slots=True)
class Context:
    """The record a ciphertext belongs to. All four fields are required, non-empty strings."""

    region: str
    tenant: str
    kind: str
    record_id: str
    # Derived, cached encoding (see module docstring). Not part of equality or repr.
    _aad: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Unrolled on purpose: contexts are built once per record operation.
        try:
            r = self.region.encode("utf-8")  # lone surrogates raise here: refuse, never guess
            t = self.tenant.encode("utf-8")
            k = self.kind.encode("utf-8")
            i = self.record_id.encode("utf-8")
            aad = _pack(">HHHH", len(r), len(t), len(k), len(i)) + r + t + k + i
        except (AttributeError, UnicodeError, struct.error):
            raise ValueError(
                f"Context fields must be strings of at most {_MAX_FIELD} UTF-8 bytes"
            ) from None
        if not (r and t and k and i):
            raise ValueError("Context fields must be non-empty strings")
        object.__setattr__(self, "_aad", aad)

    @property
    def associated_data(self) -> bytes:
        """The canonical encoding of the four fields (part of every AEAD's associated data)."""
        return self._aad
