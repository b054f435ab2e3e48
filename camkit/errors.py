"""The errors a user can cause: what was wrong and what to do, in one message.

Everything camkit raises for bad input, a bad option or a model it cannot
explain is a :class:`CamkitError`. It is a ``ValueError``, so code written
against earlier versions (``except ValueError``) keeps working; wrong-type
cases are :class:`CamkitTypeError`, which is also a ``TypeError``. The CLI
prints exactly these as one line; any other exception is a bug in camkit and
keeps its traceback -- except what the explained model itself raises:
:func:`model_code` marks those (any type, left unchanged for API callers), so
that a folder run can count them as that image's failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_MODEL_MARK = "_camkit_raised_by_model"


class CamkitError(ValueError):
    """A mistake in what camkit was asked to do; the message says what to do instead."""


class CamkitTypeError(CamkitError, TypeError):
    """A value of the wrong type (a model that is not an ``nn.Module``, a bool as a class index, ...)."""


class MissingDependency(CamkitError, ImportError):
    """An optional package a feature needs is not installed; the message names the pip command."""


@contextlib.contextmanager
def model_code() -> Iterator[None]:
    """Around a call into the user's model (its forward, or a backward through it): any exception it raises,
    other than camkit's own, is marked as the model's and re-raised unchanged."""
    try:
        yield
    except CamkitError:
        raise
    except Exception as error:
        with contextlib.suppress(AttributeError, TypeError):  # an exception type without a __dict__ stays unmarked
            setattr(error, _MODEL_MARK, True)
        raise


def raised_by_model(error: BaseException) -> bool:
    """Whether ``error`` came out of the explained model (see :func:`model_code`), not out of camkit."""
    return bool(getattr(error, _MODEL_MARK, False))


__all__ = ["CamkitError", "CamkitTypeError", "MissingDependency", "model_code", "raised_by_model"]
