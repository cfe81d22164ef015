"""`rnnlm generate --interactive`: "/name value" commands change the sampling settings
(checked by the same rule as everywhere else), and each line typed is completed with them."""

import io

from rnnlm.cli import main
from rnnlm.interactive import apply_command, run_session
from rnnlm.sample import generate
from tests.conftest import scripted_lm


def test_commands_change_the_settings():
    settings = {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "max_new_tokens": 100, "seed": None}
    assert apply_command("/temperature 0.7", settings) == "temperature = 0.7"
    apply_command("/top-k 20", settings)
    apply_command("/top-p 0.9", settings)
    apply_command("/max-new-tokens 5", settings)
    assert settings == {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "max_new_tokens": 5, "seed": None}
    assert "needs a number" in apply_command("/temperature warm", settings)
    assert apply_command("/top-p 2", settings) == "/top-p must be in (0, 1], got 2"
    assert "unknown command" in apply_command("/tempreature 1", settings)
    assert settings["temperature"] == 0.7 and settings["top_p"] == 0.9


def test_session_completes_each_line_with_the_current_settings(tokenizer_models):
    lm = tokenizer_models["char"]
    settings = {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "max_new_tokens": 30, "seed": None}
    out = []
    lines = ["/temperature 0\n", "/max-new-tokens 12\n", "The army\n", "\n", "/top-k 3\n", "Pierre looked\n"]
    assert run_session(lm, settings, iter(lines), out.append) == 2
    text = "".join(out)
    greedy = [generate(lm, p, max_new_tokens=12, temperature=0)[0] for p in ("The army", "Pierre looked")]
    assert f"The army{greedy[0]}\n" in text and f"Pierre looked{greedy[1]}\n" in text
    assert "temperature = 0.0" in text and "top_k = 3" in text


def test_generate_interactive_reads_stdin_until_it_ends(tokenizer_runs, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("/max-new-tokens 7\nNapoleon was\nThe prince\n"))
    assert main(["generate", "--checkpoint", str(tokenizer_runs["word"]), "--interactive", "--temperature", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "max_new_tokens = 7"
    assert out[1].startswith("Napoleon was ") and out[2].startswith("The prince ")
    assert len(out) == 3


def test_a_completion_never_shows_part_of_a_character():
    # The script writes "Наш" one UTF-8 byte at a time: 5 tokens end on the first byte of
    # "ш", which is held back and then finished by one more token.
    lm = scripted_lm([b"\xd0", b"\x9d", b"\xd0", b"\xb0", b"\xd1", b"\x88", b"!"])
    settings = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 5, "seed": None}
    out = []
    assert run_session(lm, settings, iter(["Вот\n"]), out.append) == 1
    assert out == ["Вот", "Н", "а", "ш", "\n"]
