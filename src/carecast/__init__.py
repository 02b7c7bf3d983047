"""CareCast: real-time patient-outcome prediction."""

__version__ = "0.1.0"
