"""The bottleneck (``involution.models.blocks``): its two inner BN -> ReLU maps are rebuilt in
backward (``layers.RebuiltMaps``) instead of kept.

- the rebuilding block gives the keeping block's output, gradients (input and every parameter)
  and running statistics bit for bit: involution and convolution, stride 1 and 2 with the
  projection shortcut, NCHW and channels_last, under CPU autocast, and through double backward;
  BNs kept in eval mode in a training block (``norm_eval``) and ``SyncBatchNorm`` rebuild
  nothing, and inside a checkpoint (other saved-tensor hooks) the block pushes none of its own;
- the maps are gone after the forward (nothing holds them), each is rebuilt once however many
  layers read it (the involution's reduction and its aggregation), and only in training;
- compiled (``torch.compile(fullgraph=True)``) the hooks stand aside and the gradients agree.
"""

from __future__ import annotations

import copy
import weakref

import pytest
import torch

from involution.layers import RebuiltMaps, batch_norm_relu_again
from involution.models.blocks import Bottleneck

INVOLUTION = {"name": "involution", "backend": "numba_cpu", "group_channels": 16}
CONVOLUTION = {"name": "convolution"}


def _blocks(operator, in_channels=64, mid=32, stride=1, dtype=torch.float32, fmt=None):
    torch.manual_seed(0)
    block = Bottleneck(in_channels, mid, stride, operator).to(dtype)
    for bn in (block.bn1, block.bn2, block.bn3):  # not the initial 1 / 0: every term matters
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    if fmt is not None:
        block = block.to(memory_format=fmt)
    keeping = copy.deepcopy(block)
    keeping.rebuild_maps = False
    return block.train(), keeping.train()


def _input(in_channels=64, size=(9, 11), dtype=torch.float32, fmt=None):
    x = torch.randn(2, in_channels, *size, dtype=dtype, generator=torch.Generator().manual_seed(1))
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    return x.requires_grad_()


def _step(block, x, autocast=None):
    x.grad = None
    block.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        out = block(x)
    out.float().backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    grads = {name: p.grad for name, p in block.named_parameters()}
    return out.detach(), x.grad, grads, {n: b.clone() for n, b in block.named_buffers()}


def _assert_same_bits(a, b):
    out_a, gx_a, gp_a, buf_a = a
    out_b, gx_b, gp_b, buf_b = b
    assert torch.equal(out_a, out_b)
    assert torch.equal(gx_a, gx_b)
    assert gp_a.keys() == gp_b.keys()
    for name in gp_a:
        assert torch.equal(gp_a[name], gp_b[name]), name
    for name in buf_a:
        assert torch.equal(buf_a[name], buf_b[name]), name


@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("operator", [INVOLUTION, CONVOLUTION], ids=["involution", "conv"])
def test_rebuilt_maps_give_the_kept_maps_bits(operator, stride, fmt):
    rebuilding, keeping = _blocks(operator, stride=stride, fmt=fmt)
    x = _input(fmt=fmt)
    _assert_same_bits(_step(rebuilding, x), _step(keeping, x))


def test_rebuilt_maps_under_autocast_bf16():
    rebuilding, keeping = _blocks(CONVOLUTION)
    x = _input()
    _assert_same_bits(_step(rebuilding, x, torch.bfloat16), _step(keeping, x, torch.bfloat16))


@pytest.mark.parametrize("operator", [INVOLUTION, CONVOLUTION], ids=["involution", "conv"])
def test_bns_kept_in_eval_mode_while_training_keep_their_maps(operator):
    """A detection backbone's ``norm_eval``: the block trains, its BNs use their running
    statistics. Their outputs are not the batch-statistics recipe's, so nothing is rebuilt and
    the gradients are the keeping block's."""
    rebuilding, keeping = _blocks(operator)
    for name in ("bn1", "bn2", "bn3"):
        mean, var = torch.rand(2, getattr(rebuilding, name).num_features)
        for block in (rebuilding, keeping):
            bn = getattr(block, name)
            bn.running_mean.copy_(mean - 0.5)
            bn.running_var.copy_(var + 0.5)
            bn.eval()
    x = _input()
    _assert_same_bits(_step(rebuilding, x), _step(keeping, x))


def test_sync_batch_norm_keeps_its_maps():
    """DDP's ``sync_batchnorm`` normalises with statistics over every process, which the
    recipe (one process's batch) would not give back: such a block keeps its maps. (Outside a
    process group SyncBatchNorm runs as a plain BN: the maps' fate is what this checks.)"""
    rebuilding, keeping = _blocks(CONVOLUTION)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(rebuilding)
    out, refs = _inner_maps(synced, _input())
    assert len(refs) == 2 and all(ref() is not None for ref in refs)
    del out


def test_a_checkpoint_around_the_block_owns_its_saving(monkeypatch):
    """Inside ``torch.utils.checkpoint`` (whose saved-tensor hooks keep nothing but the
    region's input) the block pushes no hooks of its own: the checkpoint recomputes it, and the
    gradients are the keeping block's."""
    from torch.utils.checkpoint import checkpoint

    rebuilding, keeping = _blocks(INVOLUTION)
    x = _input()
    pushed = []
    original = RebuiltMaps.__enter__

    def enter(self):
        pushed.append(self)
        return original(self)

    monkeypatch.setattr(RebuiltMaps, "__enter__", enter)
    out = checkpoint(rebuilding, x, use_reentrant=False)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    assert pushed == []
    grad_x = x.grad.clone()
    _, gx_keep, gp_keep, _ = _step(keeping, x)
    assert torch.equal(grad_x, gx_keep)
    for name, p in rebuilding.named_parameters():
        assert torch.equal(p.grad, gp_keep[name]), name


def test_a_block_on_the_meta_device_trains():
    """Shapes only (what FLOP counters and memory planners run): the recipes need no autocast
    state, which the meta device does not have."""
    with torch.device("meta"):
        block = Bottleneck(64, 32, 2, CONVOLUTION).train()
        x = torch.empty(2, 64, 9, 11, requires_grad=True)
    out = block(x)
    out.sum().backward()
    assert out.shape == (2, 128, 5, 6) and x.grad.shape == x.shape


def test_double_backward_through_rebuilt_maps():
    rebuilding, keeping = _blocks(CONVOLUTION, dtype=torch.float64)
    results = []
    for block in (rebuilding, keeping):
        x = _input(dtype=torch.float64)
        out = block(x)
        params = list(block.parameters())
        grads = torch.autograd.grad(out.square().sum(), [x, *params], create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in grads), [x, *params])
        results.append(second)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _inner_maps(block, x):
    """Weak references to the BN1 and BN2 outputs (the ReLUs work in place) of one forward."""
    refs = []
    hooks = [
        bn.register_forward_hook(lambda m, i, out: refs.append(weakref.ref(out)))
        for bn in (block.bn1, block.bn2)
    ]
    out = block(x)
    for hook in hooks:
        hook.remove()
    return out, refs


@pytest.mark.parametrize("operator", [INVOLUTION, CONVOLUTION], ids=["involution", "conv"])
def test_inner_maps_are_not_kept_for_backward(operator):
    rebuilding, keeping = _blocks(operator)
    out, refs = _inner_maps(rebuilding, _input())
    assert len(refs) == 2 and all(ref() is None for ref in refs)
    out.sum().backward()  # and backward still works from the recipes
    kept_out, kept_refs = _inner_maps(keeping, _input())
    assert all(ref() is not None for ref in kept_refs)
    rebuilding.eval()  # eval mode: nothing saved, nothing marked
    with torch.no_grad():
        assert torch.equal(rebuilding(_input()), keeping.eval()(_input()))


def test_a_map_read_by_two_layers_is_rebuilt_once(monkeypatch):
    """The involution's input feeds its reduction and its aggregation: both save it, and the
    recipe runs once."""
    calls = []

    def counted(bn, x):
        again = batch_norm_relu_again(bn, x)

        def run():
            calls.append(bn)
            return again()

        return run

    monkeypatch.setattr("involution.models.blocks.batch_norm_relu_again", counted)
    rebuilding, _ = _blocks(INVOLUTION)
    rebuilding(_input()).sum().backward()
    assert calls == [rebuilding.bn2, rebuilding.bn1]


def test_rebuilt_maps_use_the_parameters_functional_call_passed():
    """Under ``torch.func.functional_call`` the recipes use the affine tensors of that call,
    not the module's own (which are back in place when backward runs)."""
    rebuilding, keeping = _blocks(CONVOLUTION)
    params = {
        name: (p.detach() * 1.5 + 0.25).requires_grad_()
        for name, p in rebuilding.named_parameters()
    }
    grads = []
    for block in (rebuilding, keeping):
        x = _input()
        out = torch.func.functional_call(block, params, (x,))
        grads.append(torch.autograd.grad(out.square().sum(), [x, *params.values()]))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_marked_maps_are_recognised_by_storage_and_view():
    """A view of a marked map with another shape is not the map; the context forgets its maps
    on exit (their memory may then hold anything)."""
    t = torch.randn(4, 6)
    with RebuiltMaps() as maps:
        maps.mark(t, lambda: torch.zeros(4, 6))
        assert maps._pack(t) is not t
        view = t[:2]
        assert maps._pack(view) is view
        assert RebuiltMaps._unpack(maps._pack(t)).eq(0).all()
    assert maps._marked == {}


def test_rebuilt_maps_under_torch_compile_fullgraph():
    rebuilding, keeping = _blocks(CONVOLUTION)
    x = _input()
    compiled = torch.compile(rebuilding, backend="aot_eager", fullgraph=True)
    out_c, gx_c, gp_c, _ = _step(compiled, x)
    out_e, gx_e, gp_e, _ = _step(keeping, x)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(gx_c, gx_e)
    gp_c = {name.removeprefix("_orig_mod."): grad for name, grad in gp_c.items()}
    assert gp_c.keys() == gp_e.keys()
    for name, grad in gp_e.items():
        torch.testing.assert_close(gp_c[name], grad, msg=name)
