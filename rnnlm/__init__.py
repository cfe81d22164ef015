"""rnnlm: next-word language models on hand-written recurrent cells, in PyTorch."""

from rnnlm.errors import RnnlmError

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)

__all__ = ["RnnlmError", "load_model", "__version__"]


def load_model(path, device=None):
    """A trained model from a checkpoint (.pt) or a model folder (rnnlm export --format hf),
    ready to use from Python:

        lm = load_model("runs/war_and_peace/best.pt")
        lm.generate("Napoleon was the Emperor of", max_new_tokens=50, temperature=0.8)
        lm.next_words("Napoleon was the Emperor of", k=5)   # [(word, probability), ...]
        lm.score(text)                                       # loss, perplexity, bpc, ...

    `device` defaults to cuda when available, else cpu. Returns an inference.LoadedModel.
    """
    from rnnlm import inference  # lazily: `import rnnlm` stays light

    return inference.load_model(path, device)
