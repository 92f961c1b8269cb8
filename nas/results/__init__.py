"""What a study found: the Pareto front and its statistics (front), files attached to a
study or trial (artifacts)."""
