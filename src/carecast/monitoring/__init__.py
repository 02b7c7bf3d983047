"""Monitoring: metrics, structured logs, drift and performance as outcomes arrive.

Below serving and jobs, above models: it reads model cards and stored predictions, never Flask.
"""
