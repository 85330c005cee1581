"""A region of a module recomputed in backward instead of keeping its maps: ``recomputed``.

``torch.utils.checkpoint`` with what a module's region needs on top: the recomputation uses the
parameter tensors of its forward (so ``torch.func.functional_call`` works) and leaves the running
statistics of the region's batch norms as the forward updated them. The RedNet stem recomputes
its head with it (``involution.models.stems``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class _RunningStatsKept:
    """Leaves the running statistics of the BNs among ``modules`` as they are on entry: a region's
    recomputation runs its BNs in training mode a second time, which would otherwise update
    their running mean, variance and batch count twice per step. (The recomputed outputs are
    the forward's: a training-mode BN normalises with the batch's own statistics.)"""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.buffers = [
            buf
            for m in modules
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
            if buf is not None
        ]

    def __enter__(self) -> None:
        self.saved = [buf.clone() for buf in self.buffers]

    def __exit__(self, *exc_info) -> None:
        # through .data: no version bump. The recomputed BNs saved these buffers for their
        # (double) backward, which in training mode never reads their values; a version bump
        # would make autograd refuse that backward
        for buf, value in zip(self.buffers, self.saved, strict=True):
            buf.data.copy_(value)
        self.saved = []


def _with_parameters(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]):
    """(parameter tensors of ``module`` now, ``call(x, *values)``): ``fn(x)`` computed with
    ``values`` in place of those parameters (``torch.func.functional_call``), so that a
    recomputation uses the tensors of its forward (the ones ``functional_call`` passed, say),
    not whatever the module holds by then."""
    names, values = zip(*module.named_parameters(), strict=True)
    call = _Call(module, fn)

    def with_values(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        named = {f"module.{name}": value for name, value in zip(names, values, strict=True)}
        return torch.func.functional_call(call, named, (x,))

    return values, with_values


def recomputed(
    module: nn.Module,
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
) -> torch.Tensor:
    """``fn(x)``, a computation of ``module``, keeping for backward only ``x`` and the parameters
    (``torch.utils.checkpoint``): backward runs ``fn`` again to get the rest. The recomputation
    uses the parameter tensors of this forward and leaves the running statistics of the module's
    BNs as the forward updated them (each recomputation restores them: gradcheck and
    ``retain_graph`` run one region's recomputation several times)."""
    if not torch.is_grad_enabled():
        return fn(x)
    if torch.compiler.is_compiling():
        # compiled: AOTAutograd's partitioner recomputes inside the backward graph, and the
        # functionalised forward updates the running statistics once
        return checkpoint(fn, x, use_reentrant=False)

    def contexts():
        return contextlib.nullcontext(), _RunningStatsKept(module.modules())

    values, with_values = _with_parameters(module, fn)
    return checkpoint(with_values, x, *values, use_reentrant=False, context_fn=contexts)


class _Call(nn.Module):
    """``fn`` (a method of ``module``) as a module's forward, for ``functional_call``."""

    def __init__(self, module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)
