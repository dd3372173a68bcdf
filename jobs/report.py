"""Write the HTML report of a tune experiment (jobs/tune_t3d.py), finished or still running.

    python jobs/report.py EXPERIMENT_DIR

Writes EXPERIMENT_DIR/report.html: one self-contained file (plotly.js and the confusion
matrix inlined) with the best trial, every trial, accuracy vs cost, learning curves and
Optuna's plots of the search. An experiment the tune job has not summarised yet is reported
from Tune's trial folders. Needs no Ray. The last stdout line is a JSON object:
{"report": PATH, "trials": N}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raylab.jobs import one_line_errors, print_result
from raylab.report import load_trials, write_report


@one_line_errors("report")
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("experiment_dir", help="storage_path/name of a tune experiment")
    args = p.parse_args(argv)

    exp = Path(args.experiment_dir).expanduser().resolve()
    if not exp.is_dir():
        p.error(f"no experiment folder at {exp}")
    result = {"report": str(write_report(exp)), "trials": len(load_trials(exp))}
    print_result(result)
    return result


if __name__ == "__main__":
    main()
