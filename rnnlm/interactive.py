"""`rnnlm generate --interactive`: the model stays loaded and completes each line typed.

    > Napoleon was the Emperor of
    Napoleon was the Emperor of the French, and ...
    > /temperature 0.5
    temperature = 0.5
    > /top-k 20

Lines starting with "/" change the sampling settings for the rest of the session;
Ctrl-D (end of input) leaves, Ctrl-C stops the completion being written.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

from rnnlm.config import sampling_error
from rnnlm.errors import RnnlmError
from rnnlm.inference import LoadedModel
from rnnlm.sample import generate, print_stream, prompt_text
from rnnlm.tokenizer import word_separator

# /command -> (setting, type); each is a keyword argument of sample.generate.
SETTINGS = {
    "/temperature": ("temperature", float),
    "/top-k": ("top_k", int),
    "/top-p": ("top_p", float),
    "/max-new-tokens": ("max_new_tokens", int),
    "/seed": ("seed", int),
}
HELP = ("type text to complete it; " + ", ".join(f"{c} N" for c in SETTINGS)
        + " change the settings; /settings shows them; Ctrl-D leaves")


def terminal_lines(prompt: str = "> ") -> Iterator[str]:
    """Lines typed at a terminal (with line editing), until Ctrl-D."""
    while True:
        try:
            yield input(prompt)
        except EOFError:
            print()
            return


def apply_command(line: str, settings: dict) -> str:
    """Change one setting from a "/name value" line; returns what to tell the user."""
    name, _, value = line.strip().partition(" ")
    if name == "/settings":
        return ", ".join(f"{k} = {v}" for k, v in settings.items())
    if name == "/help":
        return HELP
    if name not in SETTINGS:
        return f"unknown command {name}; {HELP}"
    key, kind = SETTINGS[name]
    try:
        new = kind(value.strip())
    except ValueError:
        return f"{name} needs a number, e.g. {name} {1 if kind is int else 0.7}"
    problem = sampling_error(key, new) if key != "seed" else None
    if problem:
        return f"{name} {problem}, got {value.strip()}"
    settings[key] = new
    return f"{key} = {new}"


def run_session(lm: LoadedModel, settings: dict, lines: Iterable[str],
                write: Optional[Callable[[str], None]] = None) -> int:
    """Complete each line of `lines` with the settings (changed by /commands); returns how many.

    `settings` holds generate's keyword arguments (max_new_tokens, temperature, top_k,
    top_p, seed) and is updated in place by the commands.
    """
    write = write or print_stream
    separator = word_separator(lm.tokenizer)
    completed = 0
    for line in lines:
        line = prompt_text(line.rstrip("\r\n"), "an input line")
        if not line.strip():
            continue
        if line.startswith("/"):
            write(apply_command(line, settings) + "\n")
            continue
        write(line + separator)
        try:
            generate(lm, line, on_text=write, **settings)
        except KeyboardInterrupt:
            pass  # Ctrl-C stops this completion, not the session
        except RnnlmError as e:
            write(f"\nerror: {e}")
        write("\n")
        completed += 1
    return completed
