"""kdnb.models: output shapes, the CIFAR ResNet-18, parameter counts, seeded builds, bad args."""
import pytest
import torch
from torch import nn

from kdnb import models


def out_shape(model, in_shape, n=3):
    model.eval()
    with torch.no_grad():
        return tuple(model(torch.randn(n, *in_shape)).shape)


@pytest.mark.parametrize("in_shape", [(1, 8, 8), (1, 40), (3, 32, 32)])
def test_mlp_output_shape(in_shape):
    assert out_shape(models.mlp(in_shape, hidden=(32, 16), classes=7), in_shape) == (3, 7)
    assert out_shape(models.mlp(in_shape, hidden=(), classes=10), in_shape) == (3, 10)  # a linear model


def test_mlp_layers():
    m = models.mlp((1, 8, 8), hidden=(32,), classes=10, dropout=0.5)
    linears = [l for l in m if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(64, 32), (32, 10)]
    assert any(isinstance(l, nn.Dropout) and l.p == 0.5 for l in m)
    assert not any(isinstance(l, nn.Dropout) for l in models.mlp((1, 8, 8), hidden=(32,)))


@pytest.mark.parametrize("in_shape, dims", [((1, 40), 1), ((1, 40), None), ((1, 8, 8), 2), ((3, 32, 32), 2)])
@pytest.mark.parametrize("norm", [False, True])
def test_convnet_output_shape(in_shape, dims, norm):
    m = models.convnet(in_shape, depth=3, width=8, classes=10, dims=dims, norm=norm, hidden=16)
    assert out_shape(m, in_shape) == (3, 10)
    conv = nn.Conv1d if len(in_shape) == 2 else nn.Conv2d
    assert sum(isinstance(l, conv) for l in m) == 3
    assert any(isinstance(l, (nn.BatchNorm1d, nn.BatchNorm2d)) for l in m) == norm


def test_convnet_width_doubles_every_second_block():
    m = models.convnet((1, 40), depth=4, width=8, classes=10)
    assert [l.out_channels for l in m if isinstance(l, nn.Conv1d)] == [8, 8, 16, 16]


def test_resnet18_cifar():
    m = models.resnet18_cifar((3, 32, 32), classes=10)
    # The CIFAR stem: a 3×3 stride-1 first conv and no max-pool, so 32×32 inputs keep their detail.
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, nn.Identity)
    assert models.count_params(m) == 11_173_962  # the usual CIFAR ResNet-18 count for 10 classes
    assert out_shape(m, (3, 32, 32), n=1) == (1, 10)
    # The rest only needs shapes: the meta device builds and runs models without allocating or computing.
    import torchvision
    with torch.device("meta"):
        imagenet_stem = torchvision.models.resnet18(num_classes=10)
        assert models.count_params(imagenet_stem) - 64 * 3 * 7 * 7 + 64 * 3 * 3 * 3 == 11_173_962
        assert out_shape(models.resnet18_cifar((3, 32, 32), classes=100), (3, 32, 32)) == (3, 100)
        assert out_shape(models.resnet18_cifar((1, 28, 28), classes=10), (1, 28, 28)) == (3, 10)


def test_cifar_cnn_is_seed_001s_cifar_student():
    m = models.cifar_cnn((3, 32, 32), classes=10)
    convs = [l for l in m if isinstance(l, nn.Conv2d)]
    assert len(convs) == 6 and sum(isinstance(l, nn.BatchNorm2d) for l in m) == 6
    assert sum(isinstance(l, nn.Linear) for l in m) == 2
    assert models.count_params(m) == 815_018  # seed 001 reports 816,938 without the widths
    assert out_shape(m, (3, 32, 32)) == (3, 10)
    with pytest.raises(ValueError, match="H, W >= 8"):
        models.cifar_cnn((3, 4, 4))


def test_count_params_and_size():
    m = models.mlp((1, 8, 8), hidden=(32,), classes=10)
    n = 64 * 32 + 32 + 32 * 10 + 10
    assert models.count_params(m) == n
    assert models.size_bytes(m) == 4 * n
    m[1].requires_grad_(False)  # frozen parameters are not trainable ones...
    assert models.count_params(m) == 32 * 10 + 10
    assert models.size_bytes(m) == 4 * n  # ...but they are still stored
    bn = models.convnet((1, 40), depth=1, width=4, norm=True, hidden=8)
    # Batch-norm running statistics are buffers: stored, not trained.
    assert models.size_bytes(bn) > 4 * models.count_params(bn)


def test_build_is_reproducible_with_a_seed():
    spec = {"name": "mlp", "hidden": [32, 16], "dropout": 0.1}
    a = models.build(spec, (1, 8, 8), 10, seed=3)
    b = models.build(spec, (1, 8, 8), 10, seed=3)
    c = models.build(spec, (1, 8, 8), 10, seed=4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a[1].weight, c[1].weight)
    assert spec == {"name": "mlp", "hidden": [32, 16], "dropout": 0.1}  # the spec is not mutated
    conv = models.build({"name": "convnet", "depth": 2, "width": 4}, (1, 40), 10, seed=0)
    assert out_shape(conv, (1, 40)) == (3, 10)


@pytest.mark.parametrize("call, match", [
    (lambda: models.mlp((1, 8, 8), classes=0), "classes must be a positive integer"),
    (lambda: models.mlp((1, 8, 8), hidden=(0,)), "hidden width must be a positive integer"),
    (lambda: models.mlp((1, 8, 8), dropout=1.0), r"dropout must be in \[0, 1\)"),
    (lambda: models.mlp((), classes=10), "in_shape must be a non-empty tuple"),
    (lambda: models.mlp((1, -8, 8)), "in_shape must be a non-empty tuple of positive ints"),
    (lambda: models.convnet((1, 40), depth=0), "depth must be a positive integer"),
    (lambda: models.convnet((1, 40), width=2.5), "width must be a positive integer"),
    (lambda: models.convnet((1, 40), dims=2), "dims must be 1 or 2 and match in_shape"),
    (lambda: models.convnet((1, 8, 8), dims=3), "dims must be 1 or 2"),
    (lambda: models.convnet((1, 8, 8, 8)), "dims must be 1 or 2"),
    (lambda: models.resnet18_cifar(classes=True), "classes must be a positive integer"),
    (lambda: models.build({"name": "vit"}, (1, 8, 8), 10), "model spec must be a dict with name one of mlp"),
    (lambda: models.build("mlp", (1, 8, 8), 10), "model spec must be a dict"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
