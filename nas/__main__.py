"""`python -m nas`: what the commands are, in the order a search uses them."""

from __future__ import annotations

import sys

OVERVIEW = """\
nas: which DenseNet for your compute? An Optuna search over DenseNet shapes on
Fashion-MNIST, accuracy against MACs (fvcore), or against parameters, CPU or GPU
latency or training memory (--objectives). Each command has --help.

  python -m nas.search   run or continue a study (start here; --budget smoke
                         --preset tiny for a quick look on a CPU)
  python -m nas.report   one offline HTML page of a study: Pareto front, hypervolume,
                         importances, the Pareto table as CSV
  python -m nas.refine   train a study's most promising networks again at a higher
                         budget (and several seeds): does the ranking hold?
  python -m nas.dashboard  optuna-dashboard on a study
  python -m nas.export   write one architecture of a study as JSON (--pick knee, ...)
  python -m nas.cost     parameters, MACs (fvcore) and CPU latency of an architecture
  python -m nas.train    train an exported architecture on the study's data (train and
                         validation images), score it on the test split, write it as a
                         torch.export program and an AOTInductor CPU package (timed)
  python -m nas.doctor   check a machine: environment, data, the training step eager
                         and as a CUDA graph, several trials at once, latency

The same commands are installed as nas-search, nas-report, nas-refine, nas-dashboard,
nas-export, nas-cost, nas-train and nas-doctor.
"""


def main(argv: list[str] | None = None) -> int:
    print(OVERVIEW, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
