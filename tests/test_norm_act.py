"""The fused instance-norm + leaky-ReLU training step: same numbers as the plain modules, less kept."""
import pytest
import torch
import torch.nn.functional as F

from autoseg.networks.blocks import LEAKY_SLOPE, NORM_EPS, ConvNormAct
from autoseg.networks.norm_act import instance_norm_leaky_relu


def _reference(x, weight, bias):
    return F.leaky_relu(F.instance_norm(x, weight=weight, bias=bias, eps=NORM_EPS), LEAKY_SLOPE)


@pytest.mark.parametrize("shape", [(2, 3, 5, 6, 7), (3, 4, 9, 11)])
def test_values_and_gradients_match_the_plain_chain_in_float64(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weight = (torch.randn(shape[1], dtype=torch.float64) + 0.5).requires_grad_()
    bias = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(*shape, dtype=torch.float64)
    expected = _reference(x, weight, bias)
    expected_grads = torch.autograd.grad(expected, (x, weight, bias), upstream)
    fused = instance_norm_leaky_relu(x * 1.0, weight, bias, NORM_EPS, LEAKY_SLOPE)
    grads = torch.autograd.grad(fused, (x, weight, bias), upstream)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_near_zero_weight_gives_finite_gradients():
    x = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    weight = torch.tensor([0.0, 1.0], requires_grad=True)
    out = instance_norm_leaky_relu(x * 1.0, weight, torch.zeros(2, requires_grad=True), NORM_EPS, LEAKY_SLOPE)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(weight.grad).all()


def test_bf16_input_gives_bf16_output_and_gradient():
    x = torch.randn(2, 3, 6, 6, 6).bfloat16().requires_grad_()
    weight, bias = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    out = instance_norm_leaky_relu(x * 1, weight, bias, NORM_EPS, LEAKY_SLOPE)
    out.float().sum().backward()
    assert out.dtype == x.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32
    torch.testing.assert_close(out.float(), _reference(x.float(), weight, bias), atol=0.05, rtol=0.02)


def _kept_bytes(block: ConvNormAct, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward of one block's forward."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    return sum(kept.values())


def test_training_block_keeps_one_output_sized_tensor_less_and_eval_matches():
    torch.manual_seed(0)
    block = ConvNormAct(3, 4, 8, (3, 3, 3), (1, 1, 1))
    x = torch.randn(2, 4, 16, 16, 16, requires_grad=True)
    output_bytes = 2 * 8 * 16**3 * 4
    fused = _kept_bytes(block, x)
    plain = _kept_bytes(torch.nn.Sequential(block.conv, block.norm, torch.nn.LeakyReLU(LEAKY_SLOPE, inplace=True)), x)
    assert output_bytes <= plain - fused < output_bytes + 1024  # + the plain norm's small statistics
    trained_path = block(x).detach()
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), trained_path, rtol=0, atol=1e-6)
