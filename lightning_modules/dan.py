"""DAN: deep adaptation networks (Long et al., ICML 2015).

Source cross-entropy plus the multi-kernel MMD between source and target activations of the
adapted layers (Eq. 4 there: min 1/n_a sum J(theta(x_i), y_i) + lambda sum_l d_k^2(D_s^l, D_t^l)),
with d_k^2 the MK-MMD of Eq. 2-3. Here the adapted layers are the backbone's features and the
classifier's logits (DAN adapts AlexNet's fc6-fc8).

`estimator`: `quadratic` (default here) is the biased all-pairs estimate of Eq. 2
(`components.domain.mk_mmd2`); `linear` is the paper's linear-time unbiased estimate of Eq. 6
(`components.domain.mk_mmd2_linear`), which DAN trains with.

`kernel_weights`: `uniform` (default) gives every kernel of the family weight 1/K; `test_power` is the
paper's choice (Sec. 3.3): at every step the weights beta that maximise the test power of the
linear-time statistic on the current batch (`components.domain.max_power_kernel_weights`), held fixed while
the network minimises the MMD (DAN's min over theta, max over beta).
"""
from __future__ import annotations

from datamodules.errors import ConfigError

from .components.domain import linear_time_terms, mk_mmd2, mk_mmd2_linear, max_power_kernel_weights
from .domain_adaptation import DiscrepancyAdaptation

ESTIMATORS = {"quadratic": mk_mmd2, "linear": mk_mmd2_linear}
KERNEL_WEIGHTS = ("uniform", "test_power")


class DAN(DiscrepancyAdaptation):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, kernel_mul: float = 2.0,
                 kernel_num: int = 5, estimator: str = "quadratic", kernel_weights: str = "uniform", **common):
        super().__init__(backbone, num_classes, in_chans, optimizer, **common)
        if estimator not in ESTIMATORS:
            raise ConfigError(f"model.estimator={estimator!r} is not a choice; choices: {list(ESTIMATORS)}")
        if kernel_weights not in KERNEL_WEIGHTS:
            raise ConfigError(f"model.kernel_weights={kernel_weights!r} is not a choice; choices: {list(KERNEL_WEIGHTS)}")
        self.kernel_mul, self.kernel_num, self.estimator = kernel_mul, kernel_num, estimator
        self.kernel_weights = kernel_weights

    def discrepancy(self, source, target):
        beta = None
        if self.kernel_weights == "test_power":  # the max over beta, on this batch, without gradient
            beta = max_power_kernel_weights(linear_time_terms(source.detach(), target.detach(), self.kernel_mul, self.kernel_num))
        return ESTIMATORS[self.estimator](source, target, self.kernel_mul, self.kernel_num, weights=beta)
