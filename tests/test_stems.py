"""Stems (``involution.models.stems``): the RedNet stem is recomputed in backward.

- the recomputed stem gives the plain stem's output, input and parameter gradients (float64),
  and its BNs' running statistics and batch counts are updated once per step, not twice;
- backward and double backward through the region differentiate the parameters that
  ``torch.func.functional_call`` passed (the recomputation must use the tensors of that call);
- the region keeps no map of the stem between forward and backward (saved tensors);
- it compiles with ``torch.compile(fullgraph=True)`` to the eager gradients;
- ``operator.recompute_kernel=false`` keeps the plain stem; other stems have no region.
"""

from __future__ import annotations

import copy

import pytest
import torch

from involution.models.stems import RedNetStem, make_stem

OPERATOR = {"name": "involution", "backend": "numba_cpu", "group_channels": 4}


def _stem(recompute: bool = True, width: int = 16) -> RedNetStem:
    torch.manual_seed(0)
    stem, _ = make_stem("rednet", 3, width, {**OPERATOR, "recompute_kernel": recompute})
    return stem.double()


def _image(size=(13, 11)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, *size, dtype=torch.float64, generator=gen).requires_grad_()


def _step(stem: torch.nn.Module, x: torch.Tensor):
    x.grad = None
    stem.zero_grad(set_to_none=True)
    out = stem(x)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
    return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in stem.named_parameters()}


def _buffers(stem: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buf.clone() for name, buf in stem.named_buffers()}


def test_recomputed_stem_gives_the_plain_results_and_updates_statistics_once():
    lean, plain = _stem(True), _stem(False)
    plain.load_state_dict(lean.state_dict())
    assert lean.recompute and not plain.recompute
    x = _image()
    for _ in range(2):  # twice: the second step starts from statistics the first one updated
        out_l, gx_l, gp_l = _step(lean, x)
        out_p, gx_p, gp_p = _step(plain, x)
        torch.testing.assert_close(out_l, out_p, rtol=0, atol=1e-12)
        torch.testing.assert_close(gx_l, gx_p, rtol=0, atol=1e-12)
        assert gp_l.keys() == gp_p.keys()
        for name in gp_l:
            torch.testing.assert_close(gp_l[name], gp_p[name], rtol=0, atol=1e-12, msg=name)
        lean_buffers, plain_buffers = _buffers(lean), _buffers(plain)
        for name, value in plain_buffers.items():
            torch.testing.assert_close(lean_buffers[name], value, rtol=0, atol=0, msg=name)
    assert int(lean_buffers["0.1.num_batches_tracked"]) == 2


def test_recomputed_stem_differentiates_the_parameters_functional_call_passed():
    """Backward (and double backward) of the region see the tensors ``functional_call`` gave the
    forward, not the module's own parameters (here: different values)."""
    lean, plain = _stem(True), _stem(False)
    plain.load_state_dict(lean.state_dict())
    names = [n for n, _ in lean.named_parameters()]
    gen = torch.Generator().manual_seed(2)
    given = [
        (p.detach() + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for _, p in lean.named_parameters()
    ]
    x = _image()
    results = []
    for stem in (lean, plain):
        weights = [w.clone().requires_grad_() for w in given]
        out = torch.func.functional_call(stem, dict(zip(names, weights, strict=True)), (x,))
        first = torch.autograd.grad(out.square().sum(), (x, *weights), create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in first), (x, *weights))
        results.append((out.detach(), first, second))
    (out_l, first_l, second_l), (out_p, first_p, second_p) = results
    torch.testing.assert_close(out_l, out_p, rtol=0, atol=1e-12)
    for name, g_l, g_p in zip(["input", *names], first_l, first_p, strict=True):
        torch.testing.assert_close(g_l, g_p, rtol=0, atol=1e-10, msg=name)
    for name, g_l, g_p in zip(["input", *names], second_l, second_p, strict=True):
        torch.testing.assert_close(g_l, g_p, rtol=1e-9, atol=1e-9, msg=name)


def test_recomputed_stem_keeps_no_map_for_backward():
    """The recomputed stem keeps none of its maps (at half resolution: the first conv has stride
    2, and after the pool at a quarter) for backward, only the image; the plain stem keeps
    several of them, and the involution's kernel."""
    x = _image((16, 16))
    kept_maps = {}
    for recompute in (True, False):
        stem = _stem(recompute)
        kept = {}

        def pack(t, kept=kept):
            kept.setdefault(tuple(t.shape), set()).add(t.untyped_storage().data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            stem(x)
        kept_maps[recompute] = kept

    def maps(kept):  # the stem's maps: 8x8 or 4x4 (weights are 1x1 or 3x3, the image 16x16)
        return sum(len(ptrs) for shape, ptrs in kept.items() if shape[-2:] in ((8, 8), (4, 4)))

    kernel = (2, 2, 3, 3, 8, 8)
    assert maps(kept_maps[True]) == 0 and (2, 3, 16, 16) in kept_maps[True]
    assert maps(kept_maps[False]) >= 6
    assert kernel in kept_maps[False] and kernel not in kept_maps[True]


def test_recomputed_stem_under_torch_compile_fullgraph():
    stem = _stem(True).float()
    eager = copy.deepcopy(stem)
    x = _image((12, 12)).float().detach().requires_grad_()
    compiled = torch.compile(stem, backend="aot_eager", fullgraph=True)
    out_c, gx_c, gp_c = _step(compiled, x)
    out_e, gx_e, gp_e = _step(eager, x)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(gx_c, gx_e)
    gp_c = {name.removeprefix("_orig_mod."): grad for name, grad in gp_c.items()}
    assert gp_c.keys() == gp_e.keys()
    for name in gp_e:
        torch.testing.assert_close(gp_c[name], gp_e[name], msg=name)
    for name, value in _buffers(eager).items():
        torch.testing.assert_close(_buffers(stem)[name], value, msg=name)


@pytest.mark.parametrize("kind", ["resnet", "small"])
def test_only_the_rednet_stem_recomputes(kind):
    stem, _ = make_stem(kind, 3, 16, OPERATOR)
    assert not isinstance(stem, RedNetStem)
    conv_stem, _ = make_stem("rednet", 3, 16, {"name": "convolution"})
    assert isinstance(conv_stem, RedNetStem) and not conv_stem.recompute
