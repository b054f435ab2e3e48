"""The model call as one object: the images ``x`` and the extra inputs the model takes with them.

A VQA model takes a question with the image, a captioner the caption so far,
CLIP its texts. ``inputs=`` (a dict of keyword arguments or a tuple of extra
positional arguments) travels with ``x`` as a :class:`ModelCall`, which
knows which inputs are per-image: a tensor whose first dimension is the
batch. Wherever a method makes copies of the batch or splits it into passes,
it asks the call for those rows (:meth:`ModelCall.rows`), so per-image
inputs follow their images and the others (CLIP's texts) go in as they are.
An input whose first dimension only happens to equal the batch is marked
:class:`Shared`. Hugging Face models get ``x`` as ``pixel_values``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import CamkitTypeError, model_code

InputsSpec = Mapping[str, Any] | tuple[Any, ...] | list[Any] | None
RowIndex = torch.Tensor | slice


class Shared:
    """Marks an extra input as the same for every image, even where its first dimension equals the batch.

    ``inputs={"input_ids": camkit.Shared(texts)}``: with one image and one
    text CLIP's ``input_ids`` is ``(1, L)``, which would otherwise be read as
    one text per image and copied with the image.
    """

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Shared({type(self.value).__name__})"


@dataclass(frozen=True)
class ModelCall:
    """``model(x, *args, **kwargs)`` (or ``model(*args, pixel_values=x, **kwargs)``), with its per-image inputs known.

    Build one with :meth:`of`; ``run(model)`` makes the call. ``rows(index)``
    is the call on those rows of the batch (a tensor of image indices, which
    may repeat, or a slice), optionally on other images of that many rows.
    """

    x: torch.Tensor
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    image_keyword: str | None = None  # "pixel_values" for Hugging Face models
    per_image_args: tuple[bool, ...] = ()
    per_image_kwargs: frozenset[str] = frozenset()

    @classmethod
    def of(cls, model: nn.Module, x: torch.Tensor, inputs: InputsSpec = None) -> ModelCall:
        """The call of ``model`` on ``x`` and ``inputs`` (None, a dict of keyword arguments, or a tuple of positional ones)."""
        batch = x.shape[0]
        keyword = image_keyword_of(model)
        if inputs is None:
            return cls(x, image_keyword=keyword)
        if isinstance(inputs, Mapping):
            if keyword is not None and keyword in inputs:
                raise CamkitTypeError(f"inputs holds {keyword!r}, which camkit passes itself: it is x.")
            kwargs = {str(name): _unwrapped(value) for name, value in inputs.items()}
            per_image = frozenset(str(name) for name, value in inputs.items() if _is_per_image(value, batch))
            return cls(x, (), kwargs, keyword, (), per_image)
        if isinstance(inputs, (tuple, list)):
            args = tuple(_unwrapped(value) for value in inputs)
            return cls(x, args, {}, keyword, tuple(_is_per_image(value, batch) for value in inputs))
        raise CamkitTypeError(
            f"inputs must be a dict of keyword arguments or a tuple of extra positional arguments of the model, "
            f"got {type(inputs).__name__}."
        )

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def has_per_image_inputs(self) -> bool:
        return any(self.per_image_args) or bool(self.per_image_kwargs)

    def run(self, model: nn.Module) -> Any:
        """The model's output on this call (what the model raises is marked as its own: errors.model_code)."""
        with model_code():
            if self.image_keyword is not None:
                return model(*self.args, **{self.image_keyword: self.x}, **self.kwargs)
            return model(self.x, *self.args, **self.kwargs)

    def rows(self, index: RowIndex, images: torch.Tensor | None = None) -> ModelCall:
        """The call on rows ``index`` of the batch; ``images`` (as many rows) replace ``x[index]`` when given."""
        taken = self.x[index] if images is None else images
        args = tuple(
            _taken(value, index) if per_image else value for value, per_image in zip(self.args, self.per_image_args)
        )
        kwargs = {
            name: _taken(value, index) if name in self.per_image_kwargs else value
            for name, value in self.kwargs.items()
        }
        return ModelCall(taken, args, kwargs, self.image_keyword, self.per_image_args, self.per_image_kwargs)

    def repeat(self, copies: int, images: torch.Tensor | None = None) -> ModelCall:
        """``copies`` copies of the batch, copy-major (row r is image r % B), on ``images`` when given."""
        index = torch.arange(self.batch, device=self.x.device).repeat(copies)
        return self.rows(index, images)

    def with_images(self, images: torch.Tensor) -> ModelCall:
        """The same inputs with other images of the same batch size."""
        return ModelCall(images, self.args, self.kwargs, self.image_keyword, self.per_image_args, self.per_image_kwargs)

    def inputs(self) -> InputsSpec:
        """The extra inputs as ``inputs=`` takes them, for handing this call (or its rows) to another explainer
        or metric: a dict or a tuple (None without any), every input not per-image marked :class:`Shared`, so that
        a shared input whose first dimension happens to equal the new batch is not taken for a per-image one."""
        if self.kwargs:
            return {
                name: value if name in self.per_image_kwargs else _shared(value) for name, value in self.kwargs.items()
            }
        if self.args:
            return tuple(
                value if per_image else _shared(value) for value, per_image in zip(self.args, self.per_image_args)
            )
        return None


def as_call(model: nn.Module, x: torch.Tensor | ModelCall) -> ModelCall:
    """``x`` itself when it is a call already, else the call of ``model`` on ``x`` alone."""
    return x if isinstance(x, ModelCall) else ModelCall.of(model, x)


def image_keyword_of(model: nn.Module) -> str | None:
    """``"pixel_values"`` for a Hugging Face model whose forward takes it (CLIP's comes after ``input_ids``), else None."""
    is_hugging_face = any(
        base.__name__ == "PreTrainedModel" and base.__module__.startswith("transformers")
        for base in type(model).__mro__
    )
    if not is_hugging_face:
        return None
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return "pixel_values" if "pixel_values" in parameters else None


def _is_per_image(value: Any, batch: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch


def _unwrapped(value: Any) -> Any:
    return value.value if isinstance(value, Shared) else value


def _shared(value: Any) -> Any:
    return Shared(value) if isinstance(value, torch.Tensor) else value


def _taken(value: torch.Tensor, index: RowIndex) -> torch.Tensor:
    if isinstance(index, torch.Tensor):
        return value.index_select(0, index.to(value.device))
    return value[index]


__all__ = ["InputsSpec", "ModelCall", "Shared", "as_call", "image_keyword_of"]
