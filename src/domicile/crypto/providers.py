"""A region's key provider, made from its settings: the one place that maps `key_provider`,
`keystore_url` and `key_cache_s` (docs/CONFIGURATION.md) onto the classes of this package.

- embedded default (a local KEK file, the keystore a SQLite file beside it): `LocalKeyProvider`;
- anything else: `ManagedKeyProvider` over a keystore database (SQLite file or a PostgreSQL
  database every replica shares) and a `KeyWrapper` (local KEK file, AWS KMS, Vault transit).
"""

from __future__ import annotations

from domicile.config import (
    AwsKmsSettings,
    KeyProviderSettings,
    RegionSettings,
    VaultTransitSettings,
)

from .keys import KeyProvider, LocalKeyProvider, keystore_path
from .wrapping import KeyWrapper

__all__ = ["open_key_provider", "open_key_wrapper"]


def open_key_provider(region: RegionSettings) -> KeyProvider:
    """The key provider `region` is configured with."""
    provider = region.key_provider
    if (isinstance(provider, KeyProviderSettings)
            and region.keystore_path == keystore_path(provider.path)):
        return LocalKeyProvider(region.name, provider.path)
    from .keystore import ManagedKeyProvider

    assert region.keystore_url is not None  # resolved at load
    return ManagedKeyProvider(region.name, region.keystore_url, open_key_wrapper(region))


def open_key_wrapper(region: RegionSettings) -> KeyWrapper:
    """The holder of `region`'s KEK."""
    provider = region.key_provider
    if isinstance(provider, AwsKmsSettings):
        from .aws_kms import AwsKmsWrapper

        return AwsKmsWrapper(provider)
    if isinstance(provider, VaultTransitSettings):
        from .vault_transit import VaultTransitWrapper

        return VaultTransitWrapper(provider)
    from .keystore import LocalFileWrapper

    return LocalFileWrapper(provider.path)
