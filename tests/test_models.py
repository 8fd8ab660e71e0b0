import pytest
import torch

from smx.errors import UserError
from smx.science.catalog import CIFAR_MEAN, CIFAR_STD
from smx.science.models import Normalize, build_model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_lenet_has_the_reference_parameter_count():
    assert count_parameters(build_model("lenet", "mnist-mini")) == 431_080


@pytest.mark.parametrize(
    "arch, dataset, shape, classes",
    [
        ("lenet", "mnist", (2, 1, 28, 28), 10),
        ("cifar_resnet20", "cifar10", (2, 3, 32, 32), 10),
        ("cifar_resnet110", "cifar10", (2, 3, 32, 32), 10),
        ("resnet50", "imagenet", (2, 3, 64, 64), 1000),
    ],
)
def test_forward_gives_one_logit_per_class(arch, dataset, shape, classes):
    torch.manual_seed(0)
    model = build_model(arch, dataset).eval()
    with torch.no_grad():
        logits = model(torch.rand(shape))
    assert logits.shape == (shape[0], classes)
    assert torch.isfinite(logits).all()


def test_cifar_resnet110_has_18_blocks_per_stage():
    model = build_model("cifar_resnet110", "cifar10")
    assert len(model[1].stages) == 3 * 18
    assert 1.7e6 < count_parameters(model) < 1.75e6


def test_normalization_is_the_first_layer_and_centres_the_dataset_mean():
    model = build_model("cifar_resnet20", "cifar10")
    normalize = model[0]
    assert isinstance(normalize, Normalize)
    mean_image = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1).expand(2, 3, 32, 32)
    assert torch.allclose(normalize(mean_image), torch.zeros(2, 3, 32, 32), atol=1e-6)
    one_std_above = mean_image + torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    assert torch.allclose(normalize(one_std_above), torch.ones(2, 3, 32, 32), atol=1e-6)


def test_mnist_models_see_raw_pixels():
    images = torch.rand(2, 1, 28, 28)
    assert torch.equal(build_model("lenet", "mnist-mini")[0](images), images)


def test_incompatible_architecture_is_a_user_error_that_names_the_fix():
    with pytest.raises(UserError, match="model.arch.*cifar_resnet110"):
        build_model("lenet", "cifar10")


@pytest.mark.parametrize("arch, dataset", [("vgg16", "cifar10"), ("lenet", "svhn")])
def test_unknown_names_are_user_errors(arch, dataset):
    with pytest.raises(UserError, match="known"):
        build_model(arch, dataset)
