"""Coverage-guided fuzzing of the parser and the proxy core with atheris.

    python tests/fuzz/run_fuzzer.py parser|proxy [libFuzzer flags...]

e.g. `-max_total_time=300` or `-runs=2000`. The `host` package is
instrumented for coverage; the seeds are tests/sip/corpus (valid and
invalid) plus a few multi-message proxy sequences (seed_inputs). New inputs
libFuzzer finds go to the first directory given on the command line, if
any (`make fuzz` passes one under build/); a crash is written to
`-artifact_prefix` and the process exits non-zero.

`proxy` alternates a fresh core per input (reproducible from the input
alone) with one long-lived core that keeps its transactions across inputs,
renewed every LONG_LIVED_INPUTS inputs so that its tables stay bounded.
"""

from __future__ import annotations

import pathlib
import sys

import atheris

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "fuzz"))

with atheris.instrument_imports(include=["host"]):
    import fuzz_targets as targets

CORPUS = REPO / "tests" / "sip" / "corpus"
LONG_LIVED_INPUTS = 2000


def seed_inputs(target: str) -> list[bytes]:
    messages = [p.read_bytes() for p in sorted(CORPUS.glob("*/*.sip"))]
    if target == "parser":
        return messages
    seeds = []
    for mode in range(16):
        seeds += [bytes([mode]) + m for m in messages[mode::16]]
        seeds.append(bytes([mode]) + targets.SPLIT.join(targets.call_flow()))
    return seeds


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else ""
    if target not in ("parser", "proxy"):
        sys.exit("usage: run_fuzzer.py parser|proxy [libFuzzer flags...]")
    args = [sys.argv[0]] + sys.argv[2:]
    corpus_dirs = [a for a in args[1:] if not a.startswith("-")]
    if corpus_dirs:
        out = pathlib.Path(corpus_dirs[0])
        out.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seed_inputs(target)):
            (out / f"seed-{i:04d}").write_bytes(seed)

    if target == "parser":
        test_one = targets.check_parser
    else:
        state = {"core": None, "inputs": 0}

        def test_one(data: bytes) -> None:
            state["inputs"] += 1
            if state["inputs"] % 2:
                targets.check_proxy(data)
                return
            mode = data[0] if data else 0
            if state["core"] is None or state["inputs"] % LONG_LIVED_INPUTS == 0:
                state["core"] = targets.new_core(bool(mode & targets.CONSULT))
            targets.check_proxy(data, state["core"])

    atheris.Setup(args, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
