"""Hyperparameters of each training method, with the reference code's defaults. Torch-free.

Adding a method: write `smx/science/methods/<name>.py` with `loss(...)`, add its params model here and
register it in METHOD_PARAMS. No other method changes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MethodParams(BaseModel):
    # Keys hash these values as JSON, which has no infinity or NaN; specs already refuse them, imports need this.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def optimizer_steps_per_batch(self) -> int:
        """How many chunks a loader batch is split into, with one optimizer step per chunk."""
        return 1

    def wasted_settings(self, epochs: int) -> list[str]:
        """Valid values that leave part of the method untrained in a run of `epochs` epochs, each as
        "<key> = <value> <what it wastes>" (`smx validate` and `smx submit` warn of them)."""
        return []


def _unfinished_warmup(warmup: int, epochs: int, ramped: str) -> list[str]:
    if warmup <= epochs:
        return []
    return [f"warmup = {warmup} is longer than the {epochs} epoch(s) of training, so the ramp-up of {ramped} never "
            "finishes"]


class GaussianParams(MethodParams):
    """Gaussian augmentation (Cohen et al. 2019): cross-entropy on noisy copies of each input."""

    noise_samples: int = Field(
        1, ge=1, le=64, description="noisy copies per image (m); the batch is split into m chunks"
    )

    def optimizer_steps_per_batch(self) -> int:
        return self.noise_samples


class SmoothMixParams(MethodParams):
    """SmoothMix (Jeong et al. 2021), with the reference implementation's defaults."""

    eta: float = Field(1.0, ge=0.0, description="weight of the mixup loss")
    alpha: float = Field(1.0, gt=0.0, description="absolute L2 step size of the adversarial search")
    steps: int = Field(8, ge=1, le=100, description="number of ascent steps T")
    noise_samples: int = Field(1, ge=1, le=64, description="noise samples m, reused across steps")
    mix_step: int = Field(0, ge=0, le=1, description="0: mix from the clean input; 1: from the one-step adversary")
    max_norm: float | None = Field(None, gt=0.0, description="hard L2 bound on the search (None: unbounded)")
    warmup: int = Field(10, ge=1, description="epochs over which eta and the one-step radius ramp up")

    def optimizer_steps_per_batch(self) -> int:
        return self.noise_samples

    def wasted_settings(self, epochs: int) -> list[str]:
        return _unfinished_warmup(self.warmup, epochs, "eta and the one-step radius")


class StabilityParams(MethodParams):
    """Stability training (Li et al. 2019) as ported in smoothing-consistency: CE on the clean input plus lbd times
    the cross-entropy from the clean softmax (not detached) to the softmax of one noisy copy.

    Reference default and every recipe: lbd = 2 (MNIST, LeNet, lr 0.01, step 30, 90 epochs; CIFAR `stab/lbd_2`).
    """

    lbd: float = Field(2.0, ge=0.0, description="weight of the clean-to-noisy soft cross-entropy")


class SmoothAdvParams(MethodParams):
    """SmoothAdv with multi-noise PGD (Salman et al. 2019), as in the jh-jeong port `train_salman.py`.

    The reference takes --epsilon as an integer and divides it by 256: write the result here in L2 units,
    e.g. 64 -> 0.25, 127 -> 0.49609375, 255 -> 0.99609375, 512 -> 2.0.
    Reference defaults: epsilon 64/256, T = 10, m = 1, warmup 1 (none).
    Recipes (the jh-jeong repositories' SmoothAdv runs):
      MNIST (LeNet, lr 0.01, step 30, 90 epochs): epsilon 255/256, T = 10, warmup 10, m = 4, every sigma.
      CIFAR-10 (ResNet-110, lr 0.1, step 50, 150 epochs): warmup 10; e.g. epsilon 255/256, T = 10, m = 8 or
      epsilon 512/256, T = 10, m = 2 (the port's `pgd_255_10_10/num_8`, `pgd_512_10_10/num_2`).
    """

    epsilon: float = Field(0.25, gt=0.0, le=100.0, description="L2 radius of the attack (reference integer / 256)")
    steps: int = Field(10, ge=1, le=100, description="PGD steps T; the step size is 2 * epsilon / T")
    noise_samples: int = Field(1, ge=1, le=64, description="noise samples m per image; a batch is split into m chunks")
    warmup: int = Field(1, ge=1, description="epochs over which the radius grows linearly to epsilon (1: none)")

    def optimizer_steps_per_batch(self) -> int:
        return self.noise_samples

    def wasted_settings(self, epochs: int) -> list[str]:
        return _unfinished_warmup(self.warmup, epochs, "the attack radius")


class MacerParams(MethodParams):
    """MACER (Zhai et al. 2020), as in the jh-jeong port: the smoothed classifier's cross-entropy over k noise draws
    plus a hinge on the certified margin sigma/2 * (icdf(p1) - icdf(p2)) of the beta-sharpened smoothed softmax.

    `deferred_epochs` replaces the port's --deferred flag, which sets lbd = 0 for epochs 0..lr_step inclusive:
    write lr_step + 1 (31 for the MNIST recipe's step 30) to reproduce it, 0 for no deferral.
    Reference (port) defaults: k = 16, beta = 16, lbd = 16, gamma = 8, no deferral.
    Recipes (the jh-jeong repositories' MACER runs):
      MNIST (LeNet, lr 0.01, step 30, 90 epochs): deferred (31), lbd 16 at sigma 0.25 and 0.5, lbd 6 at sigma 1.0.
      CIFAR-10 (ResNet-110): lbd 12 at sigma 0.25 and 0.5, lbd 4 at sigma 1.0 (paper), not deferred.
    """

    noise_samples: int = Field(16, ge=1, le=256, description="noise draws k per image, in one forward pass")
    beta: float = Field(16.0, gt=0.0, description="inverse temperature of the softmax in the robustness term")
    lbd: float = Field(16.0, ge=0.0, description="weight of the robustness term")
    gamma: float = Field(8.0, gt=0.0, description="hinge margin on icdf(p1) - icdf(p2)")
    deferred_epochs: int = Field(0, ge=0, description="first epochs trained with lbd = 0 (port: lr_step + 1)")

    def wasted_settings(self, epochs: int) -> list[str]:
        if self.deferred_epochs < epochs:
            return []
        return [f"deferred_epochs = {self.deferred_epochs} covers all {epochs} epoch(s), so MACER's robustness term "
                "is never trained"]


class ConsistencyParams(MethodParams):
    """Consistency regularization (Jeong & Shin 2020): CE over m noisy copies plus, per image, lbd times the mean
    KL from the copies' average softmax to each copy and eta times the entropy of that average.

    The reference's default m = 1 makes the KL term vanish; smx defaults to m = 2, the value of its recipes.
    With `adversarial = true` the copies start from the repo's own PGD adversary (SmoothAdv + consistency); the
    attack settings are ignored otherwise. Reference defaults: lbd 10, eta 0.5, m = 1; attack epsilon 512/256,
    T = 4, warmup 10.
    Recipes (jh-jeong/smoothing-consistency):
      MNIST (LeNet, lr 0.01, step 30, 90 epochs): m = 2, eta 0.5, lbd 10 at sigma 0.25 and lbd 5 at 0.5 and 1.0;
      adversarial: m = 4, lbd 1, epsilon 255/256, T = 10, warmup 10.
      CIFAR-10 (ResNet-110): m = 2, eta 0.5, lbd 20 at sigma 0.25, 10 at 0.5, 5 or 10 at 1.0; adversarial:
      epsilon 255/256, T = 10, m = 4, lbd 2 at sigma 0.25; epsilon 512/256, T = 10, m = 2, lbd 1 at 0.5 and 1.0.
    """

    lbd: float = Field(10.0, ge=0.0, description="weight of the KL consistency term")
    eta: float = Field(0.5, ge=0.0, description="weight of the entropy of the average softmax")
    noise_samples: int = Field(2, ge=1, le=64, description="noise samples m per image; a batch is split into m chunks")
    adversarial: bool = Field(False, description="start the noisy copies from a PGD adversary of the smoothed model")
    epsilon: float = Field(2.0, gt=0.0, le=100.0, description="adversarial only: L2 radius (reference integer / 256)")
    steps: int = Field(4, ge=1, le=100, description="adversarial only: PGD steps T; the step size is 2 * epsilon / T")
    warmup: int = Field(10, ge=1, description="adversarial only: epochs over which the radius grows to epsilon")

    def optimizer_steps_per_batch(self) -> int:
        return self.noise_samples

    def wasted_settings(self, epochs: int) -> list[str]:
        # Without the adversary there is nothing to ramp up.
        return _unfinished_warmup(self.warmup, epochs, "the attack radius") if self.adversarial else []


METHOD_PARAMS: dict[str, type[MethodParams]] = {
    "gaussian": GaussianParams,
    "smoothmix": SmoothMixParams,
    "stability": StabilityParams,
    "smoothadv": SmoothAdvParams,
    "macer": MacerParams,
    "consistency": ConsistencyParams,
}
