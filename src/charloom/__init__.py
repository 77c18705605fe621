"""charloom: character-level RNN, LSTM and GRU text generation.

    import charloom
    result = charloom.train(source="names", hidden_size=128, max_time="2m")
    ck = charloom.load("runs/latest")              # a run folder or a model file
    charloom.Generator(ck.model, ck.vocab, records=ck.records).generate("Ma", n=5, temperature=0.8)
"""

from .batching import Batch, Data, RecordBatches, Stream, StreamBatches, prepare
from .checkpoint import Checkpoint
from .checkpoint import load
from .config import BatchConfig, CorpusConfig, EvalConfig, ModelConfig, SampleConfig, TrainConfig
from .corpus import Corpus, bundled
from .corpus import load as load_corpus
from .errors import CharloomError, ConfigError
from .model import CharRNN
from .sampling import Generator, choose
from .train import Evaluation, TrainResult, evaluate, train
from .vocab import Vocab

__all__ = ["Batch", "BatchConfig", "CharRNN", "CharloomError", "Checkpoint", "ConfigError", "Corpus", "CorpusConfig",
           "Data", "EvalConfig", "Evaluation", "Generator", "ModelConfig", "RecordBatches", "SampleConfig", "Stream",
           "StreamBatches", "TrainConfig", "TrainResult", "Vocab", "bundled", "choose", "evaluate", "load",
           "load_corpus", "prepare", "train"]
__version__ = "0.1.0"
