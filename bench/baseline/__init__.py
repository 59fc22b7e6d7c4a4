"""The baselines Lanes is measured against: a bare enqueue endpoint and Celery."""
