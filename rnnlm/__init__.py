"""rnnlm: next-word language models on hand-written recurrent cells, in PyTorch."""

from rnnlm.errors import RnnlmError

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)

__all__ = ["RnnlmError", "load_model", "train_model", "__version__"]


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


def train_model(config=None, *overrides, init_from=None):
    """Train a model as `rnnlm train` does; returns its final metrics (valid, test, steps,
    minutes, out_dir). `config` is a built-in config's name or a YAML file; `overrides` are
    `section.key=value` strings; `init_from` starts from a trained model (a best.pt or a
    model folder), as --init-from does:

        rnnlm.train_model("own_text", "data.path=my.txt", "train.out_dir=runs/mine")
        rnnlm.train_model("finetune", "data.path=my.txt", "train.out_dir=runs/mine",
                          init_from="runs/war_and_peace/best.pt")
    """
    from rnnlm.config import override
    from rnnlm.finetune import load_run_config
    from rnnlm.train import train as run

    extra = [override("train.init_from", init_from)] if init_from is not None else []
    return run(load_run_config(config, [*overrides, *extra]))
