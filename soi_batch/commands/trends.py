"""``soi-batch trends``: injury-source trends over time from classified output.

Example (OSHA SIR dates are M/D/YYYY)::

    soi-batch trends classified.parquet --date-col EventDate --date-format %m/%d/%Y \\
        --by quarter --level division --naics-sector --report out/trends
"""

from __future__ import annotations

import argparse
import logging

from soi_batch.trends import (
    DEFAULT_NAICS_COL,
    LEVELS,
    PERIODS,
    aggregate_trends,
    needed_columns,
    read_classified,
    trend_tests,
    write_trend_report,
)

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "trends",
        help="per-period counts of injury sources with bootstrap intervals, trend tests and an HTML report",
        description=(
            "Aggregate classified reports (output of `soi-batch classify --keep-probabilities`: "
            "Parquet file/directory, Delta table or CSV) into per-period arg-max and expected "
            "(sum of probabilities) counts with bootstrap intervals, test each code for a trend, "
            "and write trends.csv, trends.parquet, trend_tests.csv, charts and report.html."
        ),
    )
    p.add_argument("classified", help="classified output: Parquet file/dir, Delta table dir, or CSV")
    p.add_argument("--date-col", required=True, help="column with the event date, e.g. EventDate")
    p.add_argument("--date-format", default=None,
                   help="strftime format of a string date column, e.g. %%m/%%d/%%Y (default: inferred)")
    p.add_argument("--by", choices=sorted(PERIODS), default="month", help="period length (default month)")
    p.add_argument("--level", choices=list(LEVELS), default="division", help="code level (default division)")
    p.add_argument("--group-by", nargs="+", default=[], metavar="COL",
                   help="extra columns to split by, e.g. State")
    p.add_argument("--naics-sector", nargs="?", const=DEFAULT_NAICS_COL, default=None, metavar="NAICS_COL",
                   help=f"split by NAICS sector (first 2 digits; 31-33, 44-45, 48-49 combined) of "
                        f"NAICS_COL (default {DEFAULT_NAICS_COL!r})")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - interval level, and the test's FDR (0.05)")
    p.add_argument("--top-codes", type=int, default=6, help="codes charted per group (default 6)")
    p.add_argument("--max-groups", type=int, default=4, help="groups charted (most reports first; default 4)")
    p.add_argument("--report", required=True, metavar="DIR", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cols = needed_columns(date_col=args.date_col, level=args.level, group_by=args.group_by,
                          naics_sector_from=args.naics_sector)
    table = read_classified(args.classified, columns=cols)
    trends = aggregate_trends(
        table, date_col=args.date_col, by=args.by, level=args.level, group_by=args.group_by,
        naics_sector_from=args.naics_sector, date_format=args.date_format, n_boot=args.n_boot,
        seed=args.seed, alpha=args.alpha, progress=True,
    )
    tests = trend_tests(trends, alpha=args.alpha)
    paths = write_trend_report(trends, tests, args.report, top_codes=args.top_codes,
                               max_groups=args.max_groups, source=str(args.classified))
    s = trends.attrs["input_summary"]
    print(f"rows: {s['rows_in']} in, {s['rows_used']} used, {s['rows_error']} with error, "
          f"{s['rows_missing_probabilities']} without probabilities, {s['rows_bad_date']} bad dates")
    sig = tests[tests["direction"] != "no significant trend"] if not tests.empty else tests
    print(f"{len(trends)} period x code rows, {len(tests)} trend tests, {len(sig)} significant "
          f"(BH q < {args.alpha})")
    print(f"report: {paths['report_html']}")
    return 0
