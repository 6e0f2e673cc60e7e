"""`slam push MODEL --repo OWNER/NAME`: upload a slam model folder with a generated model card (slam.push).

    slam push runs/slam/final --repo me/slam-1day [--results eval-results/slam-final.json] [--private]
    slam push runs/slam/final --repo me/slam-1day --dry-run        # the card and the file list, no upload
"""

from __future__ import annotations

import argparse

from slam.push import push_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a slam model folder (a run's final/, or a `slam convert` output)")
    p.add_argument("--repo", required=True, help="hub repository OWNER/NAME (created when missing)")
    p.add_argument("--results", default=None,
                   help="eval results JSON for the card and results.json (default: MODEL/results.json or "
                        "MODEL/eval-results.json when present)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--dry-run", action="store_true", help="print the files that would be uploaded; "
                                                           "upload nothing")


def run(args: argparse.Namespace) -> int:
    push_model(args.model, args.repo, results=args.results, private=args.private, message=args.message,
               dry_run=args.dry_run)
    return 0
