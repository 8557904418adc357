"""Gaussian mixtures fitted by EM (kexue.fm/archives/5239): E-step responsibilities, M-step
weighted moments, scikit-learn's semantics, one jitted ``lax.while_loop``.

Public API::

    from zoo.mixture import GMMState, fit_gmm, e_step, m_step, log_prob, fit_gmm_reference
"""

from zoo.mixture.em import (
    COVARIANCE_TYPES,
    GMMState,
    e_step,
    fit_gmm,
    fit_gmm_reference,
    initial_parameters,
    kmeans_plusplus,
    log_prob,
    m_step,
)

__all__ = [
    "COVARIANCE_TYPES",
    "GMMState",
    "e_step",
    "fit_gmm",
    "fit_gmm_reference",
    "initial_parameters",
    "kmeans_plusplus",
    "log_prob",
    "m_step",
]
