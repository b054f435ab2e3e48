"""The errors a user can cause: what was wrong and what to do, in one message.

Everything camkit raises for bad input, a bad option or a model it cannot
explain is a :class:`CamkitError`. It is a ``ValueError``, so code written
against earlier versions (``except ValueError``) keeps working; wrong-type
cases are :class:`CamkitTypeError`, which is also a ``TypeError``. The CLI
prints exactly these as one line; any other exception is a bug in camkit and
keeps its traceback.
"""
from __future__ import annotations


class CamkitError(ValueError):
    """A mistake in what camkit was asked to do; the message says what to do instead."""


class CamkitTypeError(CamkitError, TypeError):
    """A value of the wrong type (a model that is not an ``nn.Module``, a bool as a class index, ...)."""


class MissingDependency(CamkitError, ImportError):
    """An optional package a feature needs is not installed; the message names the pip command."""


__all__ = ["CamkitError", "CamkitTypeError", "MissingDependency"]
