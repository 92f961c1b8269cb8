"""The Optuna study: what a trial is scored on and limited by (metrics), one trial from
sample to stored record (objective), and where studies live (storage)."""
