"""Maps recomputed in backward instead of kept: ``recomputed`` (a region) and ``RebuiltMaps``
(single maps).

- ``recomputed``: ``torch.utils.checkpoint`` with what a module's region needs on top: the
  recomputation uses the parameter tensors of its forward (so ``torch.func.functional_call``
  works) and leaves the running statistics of the region's batch norms as the forward updated
  them. The RedNet stem recomputes its head with it (``involution.models.stems``).
- ``RebuiltMaps``: saved-tensor hooks that keep a marked map (a BN -> ReLU output) as the recipe
  that rebuilds it from what backward keeps anyway (the BN's input), so that the layers reading
  it (a convolution, the involution) hold no copy of their own. The bottleneck's two inner BN ->
  ReLU maps use it (``involution.models.blocks``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
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


def batch_norm_relu_again(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor):
    """A recipe for what training-mode ``relu(bn(x))`` returns now, bit for bit: the batch's
    own statistics, computed by the same kernel, without touching the running statistics. It
    holds the affine tensors of this call (those ``torch.func.functional_call`` put in, say),
    not whatever the module holds when backward runs it."""
    weight, bias, eps = bn.weight, bn.bias, bn.eps

    def again() -> torch.Tensor:
        return F.relu(F.batch_norm(x, None, None, weight, bias, True, 0.0, eps), inplace=True)

    return again


class _Recipe:
    """A marked map as backward receives it: rebuilt by ``fn`` on the first unpack (under the
    forward's autocast state), then shared by every node that saved the map."""

    __slots__ = ("autocast", "device", "fn", "value")

    def __init__(self, fn: Callable[[], torch.Tensor], device: str) -> None:
        self.fn, self.device, self.value = fn, device, None
        try:
            self.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        except RuntimeError:  # a device type without autocast (meta)
            self.autocast = None

    def get(self) -> torch.Tensor:
        if self.value is None:
            if self.autocast is None:
                self.value = self.fn()
            else:
                enabled, dtype = self.autocast
                with torch.autocast(self.device, dtype=dtype, enabled=enabled):
                    self.value = self.fn()
        return self.value


def saving_is_hooked() -> bool:
    """Whether saved-tensor hooks are active already (``torch.utils.checkpoint``'s, a user's):
    their owner decides what backward keeps, and ``RebuiltMaps`` inside them would take the
    saves of its region away from them."""
    return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None


class RebuiltMaps:
    """Within ``with RebuiltMaps() as maps:``, ``maps.mark(t, fn)`` has every node that saves the
    map ``t`` for backward keep ``fn`` instead; ``fn()`` (which must return what ``t`` holds once
    the forward is done with it) rebuilds the map in backward, once for all of them.

    Why: after conv -> BN -> ReLU, the BN keeps its input and the next layer keeps the ReLU's
    output, two maps where the first gives the second for an elementwise pass. A ResNet
    bottleneck keeps two such pairs (the involution layer's input and the last 1x1
    convolution's), a sixth of its maps.

    Marked maps are recognised by their storage, offset, shape and strides; the context holds them
    until it exits, so that no other map takes a marked one's memory (and its recipe) meanwhile.
    Mark a map before any node saves it (a BN's output before the in-place ReLU that keeps it)."""

    def __init__(self) -> None:
        self._marked: dict[tuple, tuple[torch.Tensor, _Recipe]] = {}

    @staticmethod
    def _key(t: torch.Tensor) -> tuple:
        return (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype)

    def mark(self, t: torch.Tensor, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        self._marked[self._key(t)] = (t, _Recipe(fn, t.device.type))
        return t

    def _pack(self, t: torch.Tensor) -> torch.Tensor | _Recipe:
        entry = self._marked.get(self._key(t)) if t.layout == torch.strided else None
        return t if entry is None else entry[1]

    @staticmethod
    def _unpack(saved: torch.Tensor | _Recipe) -> torch.Tensor:
        return saved.get() if isinstance(saved, _Recipe) else saved

    def __enter__(self) -> RebuiltMaps:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._hooks.__exit__(*exc_info)
        self._marked.clear()


class _Call(nn.Module):
    """``fn`` (a method of ``module``) as a module's forward, for ``functional_call``."""

    def __init__(self, module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)
