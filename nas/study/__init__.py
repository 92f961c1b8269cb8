"""The Optuna study: what a trial is scored on and limited by (metrics: the one table of
costs), what a trial and a study store (record), one trial from sample to stored record
(objective), where studies live (storage) and how their URLs are shown (urls)."""
