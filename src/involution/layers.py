"""Spatial operators for the bottleneck: involution, convolution and local self-attention.

``make_spatial_op`` turns an operator description (the Hydra ``operator`` group, as a plain dict)
into the module that sits in the middle of a bottleneck block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from involution.ops import involution2d
from involution.ops._library import output_unused
from involution.ops.window_dot import window_dot


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# The operator keys' rules that hold whatever the channels: one table, read by the constructors
# below (through check_operator_fit) and by the run's pre-flight check (check_operator_spec)
# before anything is built, so both say the same line.
OPERATOR_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kernel_size": (lambda v: _positive_int(v) and v % 2 == 1, "an odd positive int"),
    "group_channels": (
        lambda v: v is None or _positive_int(v),
        "a positive int or null (one group)",
    ),
    "reduction_ratio": (_positive_int, "an int >= 1"),
    "dilation": (_positive_int, "an int >= 1"),
    "heads": (_positive_int, "an int >= 1"),
}


def check_operator_spec(spec: Mapping[str, Any]) -> None:
    """Raise ``ValueError("operator.<key> must be <allowed>, got <value>")`` for the first key of
    ``spec`` (the ``operator`` group as a dict) that breaks its rule in ``OPERATOR_RULES``."""
    for key, (ok, allowed) in OPERATOR_RULES.items():
        if key in spec and not ok(spec[key]):
            raise ValueError(f"operator.{key} must be {allowed}, got {spec[key]!r}")


def check_operator_fit(
    channels: int,
    kernel_size: int,
    group_channels: int | None = None,
    reduction_ratio: int | None = None,
    **spec: Any,
) -> None:
    """Raise a one-line ValueError naming the key when a hyperparameter breaks its rule or does
    not fit ``channels``."""
    spec = {"kernel_size": kernel_size, "group_channels": group_channels, **spec}
    if reduction_ratio is not None:
        spec["reduction_ratio"] = reduction_ratio
    check_operator_spec(spec)
    if group_channels is not None and channels % group_channels:
        raise ValueError(
            f"group_channels={group_channels!r} must divide the {channels} channels "
            f"(allowed: a divisor of {channels}, or null for one group)"
        )
    if reduction_ratio is not None and reduction_ratio > channels:
        raise ValueError(
            f"reduction_ratio={reduction_ratio!r} must be an int in [1, {channels}] "
            f"for {channels} channels"
        )


class CeilAvgPool2d(nn.Module):
    """``nn.AvgPool2d(s, s, ceil_mode=True)``: mean over each s x s window, the windows at odd
    borders averaging only the pixels they cover, so the output is ceil(H/s) x ceil(W/s).

    Written as zero padding to a multiple of s + a plain average pool, divided by the covered
    fraction: torch.compile (inductor, torch 2.14) gets the backward of ``ceil_mode=True`` wrong
    at odd sizes; this form compiles correctly (tests/test_ops.py checks compiled gradients).
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        h, w = x.shape[-2:]
        pad = (0, (-w) % s, 0, (-h) % s)
        if pad[1] == 0 and pad[3] == 0:
            # no padded copy: the pool's backward would keep it alive (as big as x) for nothing
            return F.avg_pool2d(x, s, s)
        pooled = F.avg_pool2d(F.pad(x, pad), s, s)
        covered = F.avg_pool2d(F.pad(x.new_ones(1, 1, h, w), pad), s, s)
        return pooled / covered

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one convolution equal to ``bn(conv(x))`` while ``bn`` uses its running
    statistics (eval mode). Differentiable in every parameter, so it also serves a model
    fine-tuned with frozen statistics."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1), bias


def uses_running_stats(bn: nn.BatchNorm2d) -> bool:
    """Whether ``bn`` normalises with its running statistics (then it folds into a conv)."""
    return not bn.training and bn.running_var is not None and bn.running_mean is not None


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``fold_batch_norm``, kept between calls where nothing needs its graph (no grad mode, not
    traced): folding every pair on every forward cost RedNet-50 about a tenth of its inference
    time. The cache lives on ``bn`` (not in its state dict) and is refolded when any input tensor
    is replaced (``.to()``, ...) or changed in place (optimizer steps, ``load_state_dict``): its
    key is each input's version counter and address."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return fold_batch_norm(conv, bn)
    inputs = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    key = (bn.eps,) + tuple(
        (t._version, t.data_ptr(), t.dtype, t.device) for t in inputs if t is not None
    )
    cached = bn.__dict__.get("_folded_cache")
    if cached is None or cached[0] != key:
        cached = (key, fold_batch_norm(conv, bn))
        bn.__dict__["_folded_cache"] = cached
    return cached[1]


def conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``bn(conv(x))``; in eval mode as one convolution with the BN folded in (one pass over the
    output instead of two). Training mode runs the two modules as they are."""
    if not uses_running_stats(bn):
        return bn(conv(x))
    weight, bias = _folded(conv, bn)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class ConvBNReLU(nn.Sequential):
    """conv -> BN -> ReLU (-> any further modules) as ``nn.Sequential``, so that parameters keep
    the names ``0.*``, ``1.*`` of the official checkpoints; the BN folds into the conv in eval
    mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv_bn(x, self[0], self[1])
        for module in list(self)[2:]:
            x = module(x)
        return x


class _RunningStatsKept:
    """Leaves the running statistics of the BNs among ``modules`` as they are on entry: a region's
    recomputation runs its BNs in training mode a second time, which would otherwise update
    their running mean, variance and batch count twice per step. (The recomputed outputs are
    the forward's: a training-mode BN normalises with the batch's own statistics.) Re-entrant:
    gradcheck and ``retain_graph`` run one recomputation several times."""

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


class _Recomputing:
    """The context of a region's recomputation: ``_RunningStatsKept`` over the module's BNs,
    and ``extra()`` when given. Re-entrant, as checkpoint enters one such context for each
    recomputation of the region (gradcheck and ``retain_graph`` run several)."""

    def __init__(self, module: nn.Module, extra) -> None:
        self.stats = _RunningStatsKept(module.modules())
        self.extra = extra
        self.stacks: list[contextlib.ExitStack] = []

    def __enter__(self) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(self.stats)
        if self.extra is not None:
            stack.enter_context(self.extra())
        self.stacks.append(stack)

    def __exit__(self, *exc_info) -> None:
        self.stacks.pop().__exit__(*exc_info)


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
    recompute_context: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> torch.Tensor:
    """``fn(x)``, a computation of ``module``, keeping for backward only ``x`` and the parameters
    (``torch.utils.checkpoint``): backward runs ``fn`` again to get the rest. The recomputation
    uses the parameter tensors of this forward, leaves the running statistics of the module's
    BNs as the forward updated them, and runs inside ``recompute_context()`` where given."""
    if not torch.is_grad_enabled():
        return fn(x)
    if torch.compiler.is_compiling():
        # compiled: AOTAutograd's partitioner recomputes inside the backward graph, and the
        # functionalised forward updates the running statistics once
        return checkpoint(fn, x, use_reentrant=False)

    def contexts():
        return contextlib.nullcontext(), _Recomputing(module, recompute_context)

    values, with_values = _with_parameters(module, fn)
    return checkpoint(with_values, x, *values, use_reentrant=False, context_fn=contexts)


class _Call(nn.Module):
    """``fn`` (a method of ``module``) as a module's forward, for ``functional_call``."""

    def __init__(self, module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Involution2d(nn.Module):
    """Involution: a KxK kernel generated per pixel from the input itself, shared by G channel
    groups (Li et al., CVPR 2021).

    Kernel generation follows the official code: (avg-pool by the stride, ceil mode so that odd
    input sizes give exactly the aggregation's Ho x Wo) -> 1x1 conv C -> C/r -> BN -> ReLU ->
    1x1 conv C/r -> K*K*G (with bias); the aggregation is ``involution2d``.

    Memory (``recompute_kernel=True``, the default): the generated kernel [N, G, K, K, Ho, Wo]
    holds K*K*G/C (about 3x for K = 7, 16 channels per group) the elements of the layer's input,
    and the generation branch's two C/r-channel maps (the BN's input and the hidden map) would be
    kept for its own backward. The layer keeps none of them: it is one ``torch.utils.checkpoint``
    region from its input (which the aggregation keeps anyway), and backward runs the branch
    once more, when the aggregation's gradient asks for the kernel; that one recomputation
    serves the aggregation's and the branch's backward, and skips the aggregation's own output.
    The branch is cheap next to what it saves: two 1x1 convs from C/r channels. Gradients are
    the plain graph's (the same operations on the same values, the BN's running statistics
    updated once); ``recompute_kernel=False`` keeps the plain graph.

    Args:
        channels: C, input and output channels.
        kernel_size: K, odd.
        stride: the aggregation's stride (the kernel map is generated at the output's size).
        group_channels: channels per group (C/G; must divide C), None for one group.
        reduction_ratio: r of the kernel generation's bottleneck C -> C/r.
        dilation: of the KxK window.
        backend: ``involution2d``'s backend ("auto", "reference", "numba_cpu", "numba_cuda").
        recompute_kernel: regenerate the kernel in backward instead of keeping it.

    Returns (forward):
        [N, C, Ho, Wo] for an input [N, C, H, W], Ho = ceil(H / stride) (same padding).

    Raises:
        ValueError: at construction, a one-line message naming the hyperparameter that does not
            fit ``channels`` (e.g. ``group_channels`` not dividing it, an even ``kernel_size``).

    Example:
        >>> layer = Involution2d(64, kernel_size=7, group_channels=16)
        >>> layer(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        stride: int = 1,
        group_channels: int | None = 16,
        reduction_ratio: int = 4,
        dilation: int = 1,
        backend: str = "auto",
        recompute_kernel: bool = True,
    ) -> None:
        super().__init__()
        check_operator_fit(
            channels, kernel_size, group_channels, reduction_ratio, dilation=dilation
        )
        if not isinstance(recompute_kernel, bool):
            raise ValueError(f"recompute_kernel must be true or false, got {recompute_kernel!r}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.backend = backend
        self.recompute_kernel = recompute_kernel
        self.groups = 1 if group_channels is None else channels // group_channels
        reduced = channels // reduction_ratio
        self.pool = CeilAvgPool2d(stride) if stride > 1 else nn.Identity()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=False)
        self.reduce_bn = nn.BatchNorm2d(reduced)
        self.act = nn.ReLU(inplace=True)
        self.span = nn.Conv2d(reduced, kernel_size * kernel_size * self.groups, 1)

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The C/r-channel map the kernel is generated from (the BN folded in eval mode)."""
        return self.act(conv_bn(self.pool(x), self.reduce, self.reduce_bn))

    def _span(self, hidden: torch.Tensor) -> torch.Tensor:
        """The kernel [N, G, K, K, Ho, Wo] from the hidden map: the last 1x1 conv as one batched
        matrix product, whose [N, K*K*G, Ho*Wo] output is the kernel's layout without a copy
        (NCHW or channels_last hidden map alike). oneDNN's 1x1 conv is slow at these shapes (few
        input channels, many output channels, an NCHW output): RedNet-50's 16 -> 196 channels at
        56x56, batch 8, took 14.2 ms forward+backward as a conv and 6.9 ms as this product
        (2-core Xeon, 2026-12-02); from 128 channels on the two are even."""
        n, reduced, ho, wo = hidden.shape
        weight = self.span.weight.view(1, -1, reduced).expand(n, -1, -1)
        rows = hidden.flatten(2)  # [N, C/r, Ho*Wo]: a view for NCHW and channels_last
        bias = self.span.bias
        kernel = (
            torch.bmm(weight, rows) if bias is None else torch.baddbmm(bias[:, None], weight, rows)
        )
        k = self.kernel_size
        return kernel.view(n, self.groups, k, k, ho, wo)

    def _aggregate(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return involution2d(x, kernel, self.stride, None, self.dilation, self.backend)

    def generate_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel kernels [N, G, K, K, Ho, Wo] that the aggregation applies."""
        return self._span(self._hidden(x))

    def _generate_aggregate(self, x: torch.Tensor) -> torch.Tensor:
        return self._aggregate(x, self.generate_kernel(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.recompute_kernel and torch.is_grad_enabled()):
            return self._generate_aggregate(x)
        if torch.compiler.is_compiling():
            # Compiled graphs: the checkpointed region is recomputed by AOTAutograd's partitioner,
            # which re-runs only what backward reads (the generation branch), never the
            # aggregation; the functionalised forward updates the running statistics once.
            return checkpoint(self._generate_aggregate, x, use_reentrant=False)
        # Eager: the layer is one checkpoint region, recomputed when the aggregation's backward
        # asks for its saved kernel. The recomputation makes the kernel (and the branch's maps)
        # once for both backwards, and stops at the aggregation once it has saved its operands
        # (checkpoint's early stop), which computes no output there (``output_unused``).
        return recomputed(self, self._generate_aggregate, x, recompute_context=output_unused)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"groups={self.groups}, dilation={self.dilation}, backend={self.backend!r}, "
            f"recompute_kernel={self.recompute_kernel}"
        )


class LocalSelfAttention2d(nn.Module):
    """SASA-style local self-attention (Ramachandran et al., 2019) built from the involution op.

    1x1 query/key/value projections; each of ``heads`` heads attends over a KxK window (dilation
    ``dilation``) around its pixel. Logits = q . k / sqrt(d) + q . r / sqrt(d), where the relative
    position embedding r of a window offset (u, v) is split between rows and columns: the first
    d//2 channels of each head carry a row embedding r_row[u], the other d - d//2 a column
    embedding r_col[v]. Window positions outside the image are masked out of the softmax.

    - the logits' content term is the windowed dot product ``window_dot`` (involution's
      grad_kernel pattern), with heads as groups;
    - the aggregation of values with the softmax weights is ``involution2d`` with heads as groups.

    With ``stride > 1`` the queries are computed from the input average-pooled by the stride (ceil
    mode; the same grid as involution's kernel map), keys and values at full resolution, so the
    layer downsamples like a strided convolution does.

    Args:
        channels: C, input and output channels (divisible by ``heads``).
        kernel_size: K, odd: the attention window.
        stride: output stride (queries from the pooled input).
        heads: attention heads (groups of the involution op).
        dilation: of the window.
        backend: the involution op's backend ("auto", "reference", "numba_cpu", "numba_cuda").

    Returns (forward):
        [N, C, Ho, Wo] for an input [N, C, H, W], Ho = ceil(H / stride).

    Raises:
        ValueError: at construction, one line naming ``heads``, ``kernel_size`` or ``dilation``
            when it does not fit.

    Example:
        >>> attention = LocalSelfAttention2d(64, kernel_size=7, heads=8)
        >>> attention(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        stride: int = 1,
        heads: int = 8,
        dilation: int = 1,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_operator_fit(channels, kernel_size, dilation=dilation)
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1 or channels % heads:
            raise ValueError(
                f"heads={heads!r} must divide the {channels} channels "
                f"(allowed: a positive divisor of {channels})"
            )
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.heads = heads
        self.dilation = dilation
        self.backend = backend
        self.head_channels = channels // heads
        self.row_channels = self.head_channels // 2
        self.pool = CeilAvgPool2d(stride) if stride > 1 else nn.Identity()
        self.query = nn.Conv2d(channels, channels, 1, bias=False)
        self.key = nn.Conv2d(channels, channels, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1, bias=False)
        std = self.head_channels**-0.5
        self.rel_rows = nn.Parameter(torch.randn(heads, self.row_channels, kernel_size) * std)
        self.rel_cols = nn.Parameter(
            torch.randn(heads, self.head_channels - self.row_channels, kernel_size) * std
        )

    def _window_mask(
        self, height: int, width: int, ho: int, wo: int, device: torch.device
    ) -> torch.Tensor:
        """[K, K, Ho, Wo] True where the window position lies inside the image."""
        k, s, d = self.kernel_size, self.stride, self.dilation
        p = d * (k - 1) // 2
        offsets = torch.arange(k, device=device) * d - p

        def axis(size: int, out: int) -> torch.Tensor:
            pos = torch.arange(out, device=device)[None, :] * s + offsets[:, None]  # [K, out]
            return (pos >= 0) & (pos < size)

        return axis(height, ho)[:, None, :, None] & axis(width, wo)[None, :, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k, g = self.kernel_size, self.heads
        query = self.query(self.pool(x)) * self.head_channels**-0.5
        key, value = self.key(x), self.value(x)
        ho, wo = query.shape[-2:]
        logits = window_dot(query, key, k, self.stride, None, self.dilation, g, self.backend)
        heads_query = query.view(n, g, self.head_channels, ho, wo)
        rows = torch.einsum(
            "ngcij,gcu->nguij", heads_query[:, :, : self.row_channels], self.rel_rows
        )
        cols = torch.einsum(
            "ngcij,gcv->ngvij", heads_query[:, :, self.row_channels :], self.rel_cols
        )
        logits = logits + rows[:, :, :, None] + cols[:, :, None]
        mask = self._window_mask(h, w, ho, wo, x.device)
        logits = logits.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits.view(n, g, k * k, ho, wo), dim=2).view(n, g, k, k, ho, wo)
        return involution2d(
            value, weights.to(value.dtype), self.stride, None, self.dilation, self.backend
        )

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"heads={self.heads}, dilation={self.dilation}, backend={self.backend!r}"
        )


OPERATOR_KEYS: dict[str, set[str]] = {
    "involution": {
        "kernel_size",
        "group_channels",
        "reduction_ratio",
        "dilation",
        "backend",
        "recompute_kernel",
    },
    "convolution": {"kernel_size", "groups", "dilation"},
    "attention": {"kernel_size", "heads", "dilation", "backend"},
}


def make_spatial_op(operator: Mapping[str, Any], channels: int, stride: int = 1) -> nn.Module:
    """Build the bottleneck's spatial operator from ``{"name": ..., **hyperparameters}``.

    Hyperparameter errors are raised here, at construction, i.e. before any training starts.
    """
    spec = dict(operator)
    name = spec.pop("name", None)
    if name not in OPERATOR_KEYS:
        raise ValueError(f"operator.name must be one of {sorted(OPERATOR_KEYS)}, got {name!r}")
    unknown = set(spec) - OPERATOR_KEYS[name]
    if unknown:
        raise ValueError(
            f"operator {name!r} got unknown keys {sorted(unknown)}; "
            f"allowed: {sorted(OPERATOR_KEYS[name])}"
        )
    if name == "involution":
        return Involution2d(channels, stride=stride, **spec)
    if name == "attention":
        return LocalSelfAttention2d(channels, stride=stride, **spec)
    kernel_size = spec.get("kernel_size", 3)
    dilation = spec.get("dilation", 1)
    groups = spec.get("groups", 1)
    check_operator_fit(channels, kernel_size, dilation=dilation)
    if channels % groups:
        raise ValueError(f"groups={groups!r} must divide the {channels} channels")
    return nn.Conv2d(
        channels,
        channels,
        kernel_size,
        stride=stride,
        padding=dilation * (kernel_size - 1) // 2,
        dilation=dilation,
        groups=groups,
        bias=False,
    )
