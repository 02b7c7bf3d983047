"""Real-time scoring: champion models loaded and hot-swapped (predictor), a patient scored and stored once
per data time (scorer), the durable scoring queue (queue) and the risk-updated event bus (events).

Serving and jobs import this package; it imports only store, features, models, crypto, domain, config and
errors. No Flask here.
"""

from carecast.scoring.events import EventBus, InProcessBus, RedisBus, RiskEvent, Subscription, make_bus
from carecast.scoring.predictor import FeatureError, Predictor, ScoredRisk, band_of, describe_factor
from carecast.scoring.queue import DatabaseQueue, Job, RedisQueue, ScoreQueue, make_queue
from carecast.scoring.scorer import (
    FrameScore,
    StoredPrediction,
    current_risks,
    latest_predictions,
    risk_trajectory,
    score_frames,
    score_patient,
)

__all__ = [
    "DatabaseQueue",
    "EventBus",
    "FeatureError",
    "FrameScore",
    "InProcessBus",
    "Job",
    "Predictor",
    "RedisBus",
    "RedisQueue",
    "RiskEvent",
    "ScoreQueue",
    "ScoredRisk",
    "StoredPrediction",
    "Subscription",
    "band_of",
    "current_risks",
    "describe_factor",
    "latest_predictions",
    "make_bus",
    "make_queue",
    "risk_trajectory",
    "score_frames",
    "score_patient",
]
