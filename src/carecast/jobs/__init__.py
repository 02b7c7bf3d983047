"""Jobs that tie the layers together: ingestion now; scoring, retraining and scheduling later."""
