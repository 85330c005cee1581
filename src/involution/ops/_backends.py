"""The backends of the involution ops: the interface each one implements, and the one registry.

A backend is a module that provides (structurally, see ``Backend``):

- ``NAME``, ``DTYPES`` (the dtypes it computes in) and ``can_run(device, dtype, explicit)``: None
  when it runs tensors of ``dtype`` on ``device``, else the reason it does not (one clause);
- ``forward``, ``grad_input`` and ``grad_kernel``: the three ops on plain (checked) arguments;
  ``grad_kernel`` is also the windowed dot product of ``window_dot``;
- ``grad_out_format(input, kernel, stride)``: the memory format in which the forward's backward
  should hand the incoming gradient to both gradient ops (None: as it comes), its layout policy.

``BACKENDS`` lists them in the order ``backend="auto"`` tries them; a new backend is one new
module and one entry there. When "auto" has to fall back to one of the portable backends
(``FALLBACKS``: no Numba backend runs the tensors), it says why once per process, in one logged
line.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch
from torch import Tensor

from involution.ops import _numba_cpu, _numba_cuda, _reference, _torch
from involution.ops._tracing import run_while_tracing

log = logging.getLogger("involution.ops")


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


# The order "auto" tries them in: the fastest first; then torch (shifted multiply-accumulates,
# any device, lean), which runs everything the reference (unfold, K*K copies of the input) does.
BACKENDS: tuple[Backend, ...] = (_numba_cuda, _numba_cpu, _torch, _reference)  # type: ignore[assignment]
# The portable ones: "auto" landing on one of them means no fast backend runs the tensors.
FALLBACKS: tuple[Backend, ...] = (_torch, _reference)  # type: ignore[assignment]


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
            if refusals and candidate in FALLBACKS and device.type != "meta":
                _note_once(
                    f"involution: backend='auto' runs {candidate.NAME!r} on {device.type} "
                    f"{str(dtype).replace('torch.', '')} tensors, as no faster backend runs them: "
                    + "; ".join(refusals)
                )
            return candidate.NAME
        refusals.append(f"{candidate.NAME} {reason}")
    raise ValueError(f"backend='auto' found no backend for {device}/{dtype}: {'; '.join(refusals)}")


_NOTED: set[str] = set()


@run_while_tracing
def _note_once(message: str) -> bool:
    """Log ``message`` as a warning the first time it comes up in this process (also when the
    first call is being compiled)."""
    if message not in _NOTED:
        _NOTED.add(message)
        log.warning(message)
    return True
