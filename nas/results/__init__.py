"""What a study found: the Pareto front and its statistics (front), picking one network
(picks), a study's refinements (refinements), the study as a table (table), the report's
figures and page (figures, page), files attached to a study or trial (artifacts)."""
