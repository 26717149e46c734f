"""Equal-budget comparisons (docs/comparisons.md).

python -m training.compare comparisons/NAME.toml [--output-dir OUT] [--dry-run] [--slurm] [-- stage flags]
python -m training.compare --report OUT          (summary and figure of a comparison's folder, e.g. after --slurm)
python -m training.compare --demo OUT [--demo-epochs N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from training.cluster import runs as registry
from training.errors import UserError, run_cli

DEFAULT_OUTPUT = "comparisons/results"  # OUT defaults to comparisons/results/<name> (ignored by git)


def parse_args(argv: list[str]) -> argparse.Namespace:
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m training.compare",
        description="Train the arms of a comparison at an equal budget (training compute or wall time) and report "
        "validation mIoU against cumulative compute and wall time (docs/comparisons.md). Flags after -- go to every "
        "stage of every arm.",
    )
    parser.add_argument("config", nargs="?", help="a comparison file, e.g. comparisons/demo.toml")
    parser.add_argument("--output-dir", help=f"the comparison's folder (default {DEFAULT_OUTPUT}/<config's name>)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the stages' commands, run nothing")
    parser.add_argument("--slurm", action="store_true", help="submit one SLURM chain per arm (side by side)")
    parser.add_argument("--report", metavar="OUT", help="only report the comparison in OUT (its plan.json)")
    parser.add_argument("--demo", metavar="OUT", help="the demo: generate data, run comparisons/demo.toml in OUT")
    parser.add_argument("--demo-epochs", type=int, help="the demo's reference arm's epochs (a shorter demo)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")

    def error(message):
        raise UserError(message)

    parser.error = error
    args = parser.parse_args(argv)
    args.extra = extra
    modes = [name for name in ("config", "report", "demo") if getattr(args, name)]
    if len(modes) != 1:
        raise UserError("expected one of: a comparison file, --report OUT or --demo OUT (see --help)")
    if args.demo_epochs is not None and not args.demo:
        raise UserError("--demo-epochs: only with --demo OUT")
    if args.slurm and args.demo:
        raise UserError("--slurm: the demo runs here (give a comparison file to submit its arms)")
    return args


def describe_plan(plan) -> None:
    budget = plan.comparison.budget
    unit, scale = ("TFLOP", 1e12) if budget.kind == "compute" else ("s", 1.0)
    print(f"comparison {plan.comparison.where}: {budget.describe()} = {plan.budget / scale:.4g} {unit}")
    for arm in plan.arms:
        off = 100 * (arm.planned - plan.budget) / plan.budget
        print(
            f"  arm '{arm.name}': epochs {'+'.join(map(str, arm.epochs))} -> {arm.planned / scale:.4g} {unit} "
            f"({off:+.1f}% of the budget), in {arm.output_dir}"
        )
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def report(output_dir: Path, complete: bool) -> None:
    from training.compare.plan import read_plan
    from training.compare.report import write_report
    from training.compare.results import read_results

    plan = read_plan(output_dir)
    results = read_results(output_dir, plan, complete=complete)
    for result in results:
        for missing in result.missing:
            print(f"warning: arm '{result.name}': {missing}: not done yet, reported as far as it got", file=sys.stderr)
    summary, figure, text = write_report(output_dir, plan, results)
    print(text)
    print(f"wrote {summary} and {figure}")


def compare(comparison, output_dir: Path, extra: list[str], dry_run: bool, slurm: bool) -> int:
    from training.compare.plan import plan_comparison, write_plan
    from training.compare.run import run_locally, submit_chains

    plan = plan_comparison(comparison, output_dir.resolve(), extra)
    describe_plan(plan)
    if not dry_run:
        write_plan(plan)
    if slurm:
        submit_chains(plan, dry_run)
        if not dry_run:
            print(f"when the jobs are done: python -m training.compare --report {output_dir}")
        return 0
    code = run_locally(plan, dry_run)
    if code or dry_run:
        return code
    report(output_dir, complete=True)
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.report:
        report(Path(args.report), complete=False)
        return 0
    if args.demo:
        from training.compare.demo import demo_comparison, demo_data

        os.environ.setdefault("WANDB_MODE", "disabled")  # the demo's stages log to their history.csv, not to W&B
        output_dir = Path(args.demo)
        comparison = demo_comparison(args.demo_epochs)
        data = demo_data(output_dir)
        return compare(comparison, output_dir, [*args.extra, "--data-dir", str(data.resolve())], args.dry_run, False)
    from training.compare.config import load_comparison

    comparison = load_comparison(args.config)
    output_dir = Path(args.output_dir or Path(DEFAULT_OUTPUT) / comparison.name)
    if not output_dir.is_absolute() and args.output_dir is None:
        output_dir = registry.REPO / output_dir
    return compare(comparison, output_dir, args.extra, args.dry_run, args.slurm)


def _cli(argv: list[str]) -> None:
    code = main(argv)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run_cli(_cli)
