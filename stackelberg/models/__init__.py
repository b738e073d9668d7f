"""Models: small victims for CPU work (logistic regression, MLP, small CNN)."""

from stackelberg.models.small import MLP, LogisticRegression, SmallCNN

__all__ = ["MLP", "LogisticRegression", "SmallCNN"]
