"""charloom: character-level RNN, LSTM and GRU text generation.

    import charloom
    result = charloom.train(source="names", hidden_size=128, max_time="2m")
    ck = charloom.load("runs/latest")              # a run folder or a model file
    charloom.Generator.from_checkpoint(ck).generate("Ma", n=5, temperature=0.8)
"""

import importlib
import importlib.util

# name -> (module, attribute): loaded on first use, so `import charloom` costs nothing, the ONNX backend runs
# without torch, and inference never imports the training loop
_EXPORTS = {
    **{n: ("batching", n) for n in ("Batch", "Data", "RecordBatches", "Stream", "StreamBatches", "prepare")},
    **{n: ("config", n) for n in ("BatchConfig", "CorpusConfig", "EvalConfig", "ModelConfig", "SampleConfig",
                                  "SampleOptions", "TrainConfig")},
    **{n: ("evaluation", n) for n in ("Evaluation", "evaluate", "score")},
    **{n: ("trainer", n) for n in ("TrainResult", "Trainer", "train")},
    **{n: ("errors", n) for n in ("CharloomError", "ConfigError")},
    "Checkpoint": ("checkpoint", "Checkpoint"), "load": ("checkpoint", "load"), "Corpus": ("corpus", "Corpus"),
    "bundled": ("corpus", "bundled"), "load_corpus": ("corpus", "load"), "CharRNN": ("model", "CharRNN"),
    "Runtime": ("runtime", "Runtime"), "Generator": ("sampling", "Generator"), "choose": ("decoding", "choose"),
    "OnnxGenerator": ("onnx_generator", "OnnxGenerator"), "Vocab": ("vocab", "Vocab"),
    "plot_runs": ("curves", "plot_runs"), "describe": ("runinfo", "describe"),
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):  # charloom.insight.read(...)
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'charloom' has no attribute {name!r}")
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
