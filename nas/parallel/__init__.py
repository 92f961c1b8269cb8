"""Running many trials: K at once in one process (threads), worker processes on one
machine (workers), a SLURM job array across machines (slurm), and one search run, what
nas.search and each SLURM task run (run)."""
