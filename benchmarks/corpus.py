"""Preparation time and peak memory of a training run on corpora of 10 MB to 1 GB.

    python benchmarks/corpus.py --books data/war_and_peace.txt other.txt --sizes 10M 100M
    python benchmarks/corpus.py --sizes 1G --dir /tmp/rnnlm-corpus      # needs ~3 GB of disk
    python benchmarks/corpus.py --code /path/to/other/checkout ...      # the same with other code

For each size it writes a synthetic corpus (`make_corpus`, kept in --dir for the next
time) and runs `rnnlm train` on it twice, each in a fresh process: first with an empty
token cache (read, clean, split, learn the vocabulary, tokenize, cache), then again
(the cache reused). The run is configs/own_text.yaml's (`auto` vocabulary, dropout and
epochs) with a small model, `train.max_steps=2` and a split of 99.8 / 0.1 / 0.1 %, so
that the final evaluation of a gigabyte does not take the hour that scoring 100 MB of
validation text would on a CPU: the preparation still reads and tokenizes every byte.

Reported per run: seconds until training starts (the `device` line, printed once the
data is ready and the model built; Python's and torch's start-up included), seconds in
all, and the process's peak resident memory (ru_maxrss, model and framework included).

The synthetic corpus is a file of many Gutenberg-style books (each between its own
START and END marks, as `cat *.txt` of downloads gives) made of the paragraphs of the
--books in a fresh random order per book, each book with its own proper names swapped
for made-up ones, so that the text is not one string repeated and the vocabulary keeps
growing a little with the size, as a real collection's does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
SETTINGS = ["model.hidden_size=64", "model.embedding_size=64", "model.num_layers=1", "train.max_steps=2",
            "train.progress=false", "train.overwrite=true", "data.split=[0.998, 0.001, 0.001]",
            "train.eval_tokens=2000"]


def parse_size(text: str) -> int:
    """'10M' -> 10 * 2**20 bytes ('1G', '500K', or a plain number of bytes)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"size {text!r}: write e.g. 10M, 100M or 1G")
    return int(float(match.group(1)) * UNITS.get(match.group(2), 1))


def paragraphs(books: list[Path]) -> list[str]:
    """The paragraphs (blank-line separated) of the books' texts, Gutenberg headers off."""
    from rnnlm.data import clean_text, read_text

    found = []
    for book in books:
        found += [p for p in clean_text(read_text(book)).split("\n\n") if p.strip()]
    return found


def made_up_name(rng: random.Random) -> str:
    syllables = ["ka", "lo", "mi", "ra", "ven", "dor", "el", "is", "tan", "sha", "bru", "quo", "zel", "an"]
    return "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))).capitalize()


def synthetic_book(number: int, paras: list[str], rng: random.Random, size: int, marks: bool = True) -> str:
    """One book of about `size` characters: shuffled paragraphs, its own names, its own
    marks (without `marks`, the text alone, which code that keeps only a file's first
    book reads whole)."""
    names = {name: made_up_name(rng) for name in rng.sample(NAMES, k=min(len(NAMES), 12))}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    body, length = [], 0
    while length < size:
        para = pattern.sub(lambda m: names[m.group(1)], rng.choice(paras))
        body.append(para)
        length += len(para) + 2
    title = f"SYNTHETIC BOOK {number}"
    if not marks:
        return "\n\n".join(body) + "\n\n"
    return (f"The Project Gutenberg eBook of {title.title()}\n\n"
            f"*** START OF THE PROJECT GUTENBERG EBOOK {title} ***\n\n"
            + "\n\n".join(body) + f"\n\n*** END OF THE PROJECT GUTENBERG EBOOK {title} ***\n\nLicense text.\n\n")


NAMES = ["Pierre", "Natásha", "Andrew", "Nicholas", "Mary", "Anna", "Sónya", "Borís", "Hélène", "Kutúzov",
         "Napoleon", "Elizabeth", "Darcy", "Jane", "Bingley", "Wickham", "Lydia", "Alice", "Rabbit", "Queen"]


def make_corpus(path: Path, size: int, books: list[Path], seed: int = 0, marks: bool = True) -> Path:
    """A file of about `size` bytes of synthetic books (kept: made once per size and seed)."""
    if path.exists() and path.stat().st_size >= size:
        return path
    rng, paras = random.Random(seed), paragraphs(books)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        written, number = 0, 0
        while written < size:
            number += 1
            book_size = min(rng.randint(300_000, 3_000_000), size - written + 1000)
            text = synthetic_book(number, paras, rng, book_size, marks)
            f.write(text)
            written += len(text.encode("utf-8"))
    tmp.replace(path)
    return path


def run_training(corpus: Path, work: Path, code: Path, config: Path) -> dict:
    """One `rnnlm train` in a fresh process: seconds to the first step, in all, and peak RSS."""
    cmd = [sys.executable, "-m", "rnnlm.cli", "train", "--config", str(config), f"data.path={corpus}",
           f"data.cache_dir={work / 'cache'}", f"train.out_dir={work / 'run'}", *SETTINGS]
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=code)
    ready, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if ready is None and line.startswith("device "):
            ready = time.perf_counter() - start
    _, status, usage = os.wait4(proc.pid, 0)
    total = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"rnnlm train failed on {corpus}:\n" + "".join(lines[-20:]))
    data_line = next((l.strip() for l in lines if l.startswith("data: ")), "")
    return {"ready_s": round(ready or total, 1), "total_s": round(total, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "data": data_line}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--books", nargs="+", type=Path, default=[REPO / "data" / "war_and_peace.txt"],
                        help="texts whose paragraphs make the synthetic corpora")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[parse_size(s) for s in ("10M", "100M", "1G")])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/rnnlm-corpus"), help="where corpora and runs go")
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose rnnlm runs (PYTHONPATH)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "own_text.yaml")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--no-marks", action="store_true",
                        help="books without Gutenberg marks (for code that keeps only a file's first book)")
    args = parser.parse_args(argv)
    rows = []
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; code {args.code}")
    print("| corpus | run | to first step (s) | in all (s) | peak RSS (MB) |\n| --- | --- | --- | --- | --- |")
    for size in args.sizes:
        name = f"{size >> 20}M" + ("_plain" if args.no_marks else "")
        corpus = make_corpus(args.dir / f"corpus_{name}.txt", size, args.books, marks=not args.no_marks)
        work = args.dir / f"work_{name}"
        for run in ("empty cache", "cache reused"):
            if run == "empty cache":
                subprocess.run(["rm", "-rf", str(work)], check=True)
            row = {"size_mb": size >> 20, "run": run, **run_training(corpus, work, args.code.resolve(), args.config)}
            rows.append(row)
            print(f"| {row['size_mb']:,} MB | {run} | {row['ready_s']} | {row['total_s']} | {row['peak_rss_mb']:,} |",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
