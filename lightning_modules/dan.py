"""DAN: deep adaptation networks (Long et al., ICML 2015).

Source cross-entropy plus the multi-kernel MMD between source and target activations of the
adapted layers (Eq. 4 there: min 1/n_a sum J(theta(x_i), y_i) + lambda sum_l d_k^2(D_s^l, D_t^l)),
with d_k^2 the MK-MMD of Eq. 2-3 (`components.domain.mk_mmd2`). Here the adapted layers are the
backbone's features and the classifier's logits (DAN adapts AlexNet's fc6-fc8).
"""
from __future__ import annotations

from .components.domain import mk_mmd2
from .domain_adaptation import DiscrepancyAdaptation


class DAN(DiscrepancyAdaptation):
    def __init__(self, backbone: dict, num_classes: int, in_chans: int, optimizer, kernel_mul: float = 2.0,
                 kernel_num: int = 5, **common):
        super().__init__(backbone, num_classes, in_chans, optimizer, **common)
        self.kernel_mul, self.kernel_num = kernel_mul, kernel_num

    def discrepancy(self, source, target):
        return mk_mmd2(source, target, self.kernel_mul, self.kernel_num)
