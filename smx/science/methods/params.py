"""Hyperparameters of each training method, with the reference code's defaults. Torch-free.

Adding a method: write `smx/science/methods/<name>.py` with `loss(...)`, add its params model here and
register it in METHOD_PARAMS. No other method changes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def optimizer_steps_per_batch(self) -> int:
        """How many chunks a loader batch is split into, with one optimizer step per chunk."""
        return 1


class GaussianParams(MethodParams):
    """Gaussian augmentation (Cohen et al. 2019): cross-entropy on noisy copies of each input."""

    noise_samples: int = Field(1, ge=1, le=64, description="noisy copies per image (m); the batch is split into m chunks")

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


METHOD_PARAMS: dict[str, type[MethodParams]] = {
    "gaussian": GaussianParams,
    "smoothmix": SmoothMixParams,
}
