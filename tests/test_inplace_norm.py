"""In-place instance norm for CPU inference: the module's values, in either memory layout."""
import pytest
import torch

from autoseg.networks.inplace_norm import normalize_


def _norm(channels: int) -> torch.nn.InstanceNorm3d:
    norm = torch.nn.InstanceNorm3d(channels, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, channels))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, channels))
    return norm


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_inference_normalizes_in_place_and_keeps_the_layout(layout):
    torch.manual_seed(0)
    norm, x = _norm(4), torch.randn(3, 4, 5, 6, 7) * 3 + 2
    expected = norm(x)
    y = x.clone(memory_format=layout)
    with torch.inference_mode():
        out = normalize_(norm, y)
    assert out.data_ptr() == y.data_ptr()  # no new activation-sized tensor
    assert out.is_contiguous(memory_format=layout)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_bf16_input_stays_bf16_and_close_to_float32():
    norm, x = _norm(4), torch.randn(2, 4, 6, 6, 6)
    with torch.no_grad():
        out = normalize_(norm, x.bfloat16().contiguous(memory_format=torch.channels_last_3d))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), norm(x).detach(), rtol=0.02, atol=0.03)


def test_with_autograd_the_module_runs_and_the_input_is_left_alone():
    norm, x = _norm(2), torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    y = x * 1.0
    before = y.detach().clone()
    out = normalize_(norm, y)
    out.sum().backward()
    assert torch.equal(y.detach(), before) and x.grad is not None
