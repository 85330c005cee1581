"""The backends of the involution ops: the interface each one implements, and the one registry.

A backend is a module that provides (structurally, see ``Backend``):

- ``NAME``, ``DTYPES`` (the dtypes it computes in) and ``can_run(device, dtype, explicit)``: None
  when it runs tensors of ``dtype`` on ``device``, else the reason it does not (one clause);
- ``forward``, ``grad_input`` and ``grad_kernel``: the three ops on plain (checked) arguments;
  ``grad_kernel`` is also the windowed dot product of ``window_dot``;
- ``grad_out_format(input, kernel, stride)``: the memory format in which the forward's backward
  should hand the incoming gradient to both gradient ops (None: as it comes), its layout policy.

``BACKENDS`` lists them in the order ``backend="auto"`` tries them; a new backend is one new
module and one entry there.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from involution.ops import _numba_cpu, _numba_cuda, _reference


class Backend(Protocol):
    """What ``involution.ops`` needs of a backend module."""

    NAME: str
    DTYPES: tuple[torch.dtype, ...]

    def can_run(self, device: torch.device, dtype: torch.dtype, explicit: bool) -> str | None: ...

    def grad_out_format(
        self, input: Tensor, kernel: Tensor, stride: tuple[int, int]
    ) -> torch.memory_format | None: ...

    def forward(self, input: Tensor, kernel: Tensor, stride, padding, dilation) -> Tensor: ...

    def grad_input(
        self, grad_out: Tensor, kernel: Tensor, input_size, stride, padding, dilation
    ) -> Tensor: ...

    def grad_kernel(
        self, grad_out: Tensor, input: Tensor, kernel_size, groups, stride, padding, dilation
    ) -> Tensor: ...


# The order "auto" tries them in: the fastest first, the reference (runs anything) last.
BACKENDS: tuple[Backend, ...] = (_numba_cuda, _numba_cpu, _reference)  # type: ignore[assignment]


def names() -> tuple[str, ...]:
    """The names a caller may ask for: "auto", then each backend's ``NAME`` in order."""
    return ("auto", *(b.NAME for b in BACKENDS))


NAMES = names()


def check_name(backend: object) -> str:
    """``backend`` if it names a backend or "auto"; raises a one-line ValueError otherwise."""
    if not isinstance(backend, str) or backend not in names():
        raise ValueError(f"backend must be one of {names()}, got {backend!r}")
    return backend


def get(name: str) -> Backend:
    """The backend module called ``name`` (a concrete name, not "auto")."""
    for backend in BACKENDS:
        if backend.NAME == name:
            return backend
    raise ValueError(f"backend must be one of {names()[1:]}, got {name!r}")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The concrete backend that runs ``dtype`` tensors on ``device`` for request ``backend``.

    "auto" takes the first of ``BACKENDS`` that can run them; a named backend must run them
    itself. Raises a one-line ``TypeError`` (the dtype is not one the backend computes in) or
    ``ValueError`` (anything else), with each refusal's reason.
    """
    check_name(backend)
    if backend != "auto":
        named = get(backend)
        reason = named.can_run(device, dtype, explicit=True)
        if reason is None:
            return backend
        error = TypeError if dtype not in named.DTYPES else ValueError
        raise error(f"backend={backend!r} {reason}")
    refusals = []
    for candidate in BACKENDS:
        reason = candidate.can_run(device, dtype, explicit=False)
        if reason is None:
            return candidate.NAME
        refusals.append(f"{candidate.NAME} {reason}")
    raise ValueError(f"backend='auto' found no backend for {device}/{dtype}: {'; '.join(refusals)}")
