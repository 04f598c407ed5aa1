"""``popsdask bench``: runs benchmarks/bench.py of a source checkout (the driver is not shipped)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.validation import InputError

HELP = "performance benchmarks (needs a source checkout)"
# the driver parses its own options: prefix "+" so that every "--option" after "bench" reaches it
# unparsed, and its own --help answers
PARSER_OPTIONS = {"add_help": False, "prefix_chars": "+", "formatter_class": argparse.HelpFormatter}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("argv", nargs=argparse.REMAINDER, help="benchmarks/bench.py's options (--help lists them)")


def run(args: argparse.Namespace) -> int:
    import importlib.util

    driver = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"
    if not driver.is_file():
        raise InputError(f"bench needs a source checkout: no benchmark driver at {driver}")
    spec = importlib.util.spec_from_file_location("popsdask_bench_driver", driver)
    assert spec is not None and spec.loader is not None  # a .py file that exists
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(args.argv)
    return 0
