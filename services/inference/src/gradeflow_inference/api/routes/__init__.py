"""One router per concern: predict (the hot path), labels (feedback and the log), ops (model, health)."""
