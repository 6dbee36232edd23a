"""Typed sections of `params.yaml`, loaded and validated when a stage starts.

One module per top-level section (``common``, ``pull``, ``moderate``, ...), each with its models and its
``SECTION`` type; :mod:`stages.core.params.base` holds what they share (validation, error messages, the
scoped view, :func:`load`). A stage imports the section modules it reads (and :func:`load` imports those
of its declared keys), so an edit to another stage's schema never outdates it; :mod:`stages.core.params.all`
validates the whole file at once (tests, and ``python -m stages.core.params.all``).
"""

from stages.core.params.base import Scoped, Section, UndeclaredParam, get, load, of, read_yaml, scope

__all__ = ["Scoped", "Section", "UndeclaredParam", "get", "load", "of", "read_yaml", "scope"]
