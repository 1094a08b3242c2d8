"""`python -m cnnlib.study profile|plan|collect`: the study's command line.

- profile: the profile a run would use ($CNNLIB_PROFILE, else full on CUDA, cpu otherwise);
- plan:    per notebook, its runs and their time estimated from speeds measured here, and
           the study's training from scratch;
- collect: merge the studies' results into results.csv, write the reports' landing page
           (outputs/reports/index.html) and refresh the README's tables
           (the pipeline's last step).
"""

from __future__ import annotations

import sys
from pathlib import Path

from cnnlib.flags import Parser
from cnnlib.study.budget import scratch_line
from cnnlib.study.locations import outputs_root, resolve_profile
from cnnlib.study.plan import plan_lines, plan_work
from cnnlib.study.readme import collect_results


def main(argv=None) -> int:
    p = Parser(prog="python -m cnnlib.study")
    p.add_argument("command", choices=["profile", "plan", "collect"],
                   help="profile: print the resolved profile; plan: runs and estimated time "
                        "per notebook; collect: merge the studies' results and refresh the "
                        "README's tables")
    p.add_argument("--profile", default="auto", help="profile (profile, plan)")
    p.add_argument("--out", default=None,
                   help="outputs folder (collect; default: $CNNLIB_OUTPUTS or outputs)")
    p.add_argument("--readme", default="README.md", help="README to update (collect; '' for none)")
    args = p.parse_args(argv)
    if args.command == "collect":
        out = Path(args.out or outputs_root())
        try:
            df = collect_results(out, args.readme or None)
        except (ValueError, OSError) as e:  # a refused (edited) table, an unusable file
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"results: {len(df)} rows -> {out / 'results.csv'}, {out / 'results.md'}")
        return 0
    try:
        profile = resolve_profile(args.profile)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "profile":
        print(profile)
    else:
        try:
            work = plan_work(profile)
        except ValueError as e:  # a budget the store's pinned machine never timed
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"profile {profile}:")
        for line in [*plan_lines(profile, work=work), scratch_line(work)]:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
