"""Typed sections of `params.yaml`, loaded and validated when a stage starts.

One module per top-level section (``common``, ``pull``, ``moderate``, ...), each with its models and its
``SECTION`` type; :mod:`stages.core.params.base` holds what they share (validation, error messages, the
scoped view, :func:`load`). :func:`load` validates the whole file (:mod:`stages.core.params.all`, imported by
name) and scopes it to the stage's keys; a stage's code deps hold only the section modules it reads, so an edit
to another stage's schema never outdates it (it can refuse the file, never change the stage's outputs).
"""

from stages.core.params.base import Scoped, Section, UndeclaredParam, get, load, of, read_yaml, scope

__all__ = ["Scoped", "Section", "UndeclaredParam", "get", "load", "of", "read_yaml", "scope"]
