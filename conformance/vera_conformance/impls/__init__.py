"""Implementations shipped with the kit: factories for ``--impl``."""
