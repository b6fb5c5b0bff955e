"""Model families as plug-ins (see `base.py` for the interface). Importing this package registers the built-in
families, and the libraries whose model transforms a saved model may need on load (pruning, MoE)."""

from compress.families import cnn, decoder, encoder  # noqa: F401
from compress.families.base import (
    FAMILIES,
    Family,
    family_for,
    family_of,
    family_of_source,
    load,
    register_family,
    source_key,
    source_kind,
    source_where,
)
from compress.moe import convert as _moe  # noqa: F401 - registers the `moe` transform
from compress.pruning import channels as _channels  # noqa: F401 - registers the `channel_shapes` transform

__all__ = [
    "FAMILIES", "Family", "family_for", "family_of", "family_of_source", "load", "register_family", "source_key",
    "source_kind", "source_where",
]  # fmt: skip
