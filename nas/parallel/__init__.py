"""Running many trials: K at once in one process (threads), worker processes on one
machine (workers), a SLURM job array across machines (slurm)."""
