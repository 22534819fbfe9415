"""DAN: deep adaptation networks (Long et al., ICML 2015).

Source cross-entropy plus the multi-kernel MMD between source and target activations of the
adapted layers (Eq. 4 there: min 1/n_a sum J(theta(x_i), y_i) + lambda sum_l d_k^2(D_s^l, D_t^l)),
with d_k^2 the MK-MMD of Eq. 2-3. Here the adapted layers are the backbone's features and the
classifier's logits (DAN adapts AlexNet's fc6-fc8).

`estimator`: `quadratic` (default here) is the biased all-pairs estimate of Eq. 2
(`components.domain.mk_mmd2`); `linear` is the paper's linear-time unbiased estimate of Eq. 6
(`components.domain.mk_mmd2_linear`), which DAN trains with.
"""
from __future__ import annotations

from datamodules.errors import ConfigError

from .components.domain import mk_mmd2, mk_mmd2_linear
from .domain_adaptation import DiscrepancyAdaptation

ESTIMATORS = {"quadratic": mk_mmd2, "linear": mk_mmd2_linear}


class DAN(DiscrepancyAdaptation):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, kernel_mul: float = 2.0,
                 kernel_num: int = 5, estimator: str = "quadratic", **common):
        super().__init__(backbone, num_classes, in_chans, optimizer, **common)
        if estimator not in ESTIMATORS:
            raise ConfigError(f"model.estimator={estimator!r} is not a choice; choices: {list(ESTIMATORS)}")
        self.kernel_mul, self.kernel_num, self.estimator = kernel_mul, kernel_num, estimator

    def discrepancy(self, source, target):
        return ESTIMATORS[self.estimator](source, target, self.kernel_mul, self.kernel_num)
