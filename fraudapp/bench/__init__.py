"""Benchmarks: scripts that print the figures the README reports (`fraudapp bench ...`).

`pipeline` drives the streaming pipeline at an offered rate; `api` loads the synchronous
decision endpoint from a separate process; `dashboard` watches the overview page in headless
Chromium while the pipeline runs at 10,000 tx/s; `features` times the two feature executors;
`training` times features + fit on ~1M simulated transactions; `rebuild` times the startup
rebuild of the feature state from the stored transactions. They measure; they assert nothing.
"""

from __future__ import annotations

import argparse


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    from fraudapp.bench import api, dashboard, features, pipeline, rebuild, training

    bench = subparsers.add_parser("bench", help="run a benchmark and print its figures")
    kinds = bench.add_subparsers(dest="bench", required=True)
    pipeline.add_cli(kinds)
    api.add_cli(kinds)
    dashboard.add_cli(kinds)
    features.add_cli(kinds)
    training.add_cli(kinds)
    rebuild.add_cli(kinds)
