"""r-robustness of VAEs (Camuto et al. 2021): Monte Carlo p_r and r_min, encoder Jacobian norms,
Theorem 1 certificates and the empirical margin."""

from .certify import Certificate, CertifyConfig, certify, robust_reconstruction, theorem1_radius
from .jacobian import encoder_jacobian, jacobian_norm
from .margin import MarginResult, empirical_margin
from .sampling import (
    RobustnessEstimate,
    SequentialDecision,
    clopper_pearson,
    delta_norms,
    r_min,
    r_robustness,
    sequential_bernoulli_test,
    sequential_robustness,
)

__all__ = [
    "delta_norms", "r_robustness", "r_min", "clopper_pearson", "RobustnessEstimate",
    "sequential_bernoulli_test", "sequential_robustness", "SequentialDecision",
    "encoder_jacobian", "jacobian_norm",
    "certify", "Certificate", "CertifyConfig", "robust_reconstruction", "theorem1_radius",
    "empirical_margin", "MarginResult",
]
