"""charloom: character-level RNN, LSTM and GRU text generation.

    import charloom
    result = charloom.train(source="names", hidden_size=128, max_time="2m")
    ck = charloom.load("runs/latest")              # a run folder or a model file
    charloom.Generator.from_checkpoint(ck).generate("Ma", n=5, temperature=0.8)
"""

from .batching import Batch, Data, RecordBatches, Stream, StreamBatches, prepare
from .checkpoint import Checkpoint
from .checkpoint import load
from .config import BatchConfig, CorpusConfig, EvalConfig, ModelConfig, SampleConfig, SampleOptions, TrainConfig
from .corpus import Corpus, bundled
from .corpus import load as load_corpus
from .errors import CharloomError, ConfigError
from .evaluation import Evaluation, evaluate, score
from .model import CharRNN
from .runtime import Runtime
from .sampling import Generator, choose
from .vocab import Vocab

_TRAINING = ("TrainResult", "Trainer", "train")  # loaded on first use: inference never imports the training loop

__all__ = ["Batch", "BatchConfig", "CharRNN", "CharloomError", "Checkpoint", "ConfigError", "Corpus", "CorpusConfig",
           "Data", "EvalConfig", "Evaluation", "Generator", "ModelConfig", "RecordBatches", "Runtime", "SampleConfig",
           "SampleOptions", "Stream", "StreamBatches", "TrainConfig", "TrainResult", "Trainer", "Vocab", "bundled",
           "choose", "evaluate", "load", "load_corpus", "prepare", "score", "train"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _TRAINING:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'charloom' has no attribute {name!r}")
