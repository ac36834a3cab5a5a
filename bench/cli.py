"""What the benchmarks' command lines share with main.py's: comma-separated number lists checked by argparse,
and a one-line error (exit code 2) for a configuration, a study or a data file that is not right."""

import argparse
import signal
import sys
from collections.abc import Callable


def numbers(kind: type[int] | type[float]) -> Callable[[str], list]:
    """An argparse type: "1,3,10" -> [1, 3, 10] ("1e6" is an int too); anything else a one-line usage error."""

    def parse(text: str) -> list:
        values = []
        for item in text.split(","):
            try:
                value = float(item)
            except ValueError:
                value = None
            if value is None or (kind is int and not value.is_integer()):
                example = "1,3,10" if kind is int else "0.5,1,1.5"
                raise argparse.ArgumentTypeError(
                    f"expected comma-separated {kind.__name__}s, e.g. {example}; got {text!r}"
                )
            values.append(kind(value))
        return values

    return parse


def run_cli(main: Callable[[], None]) -> None:
    """main(), with a bad configuration, a missing study or data file said in one line, as main.py says it; and a
    Ctrl-C, or `kill -INT` of a background job (a shell starts those with SIGINT ignored: taken back, as main.py
    does), ending it with exit code 130 and a line saying that the benchmark resumes where it stopped."""
    from data.files_location import DataError
    from training.config import ConfigError, one_line

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except (ConfigError, DataError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as interruption:
        said = str(interruption) or "what finished is kept; run the same command to resume"
        print(f"interrupted: {said}", file=sys.stderr)
        sys.exit(130)
