"""charloom: character-level RNN, LSTM and GRU text generation."""

from .batching import Batch, Data, RecordBatches, Stream, StreamBatches, prepare
from .config import BatchConfig, CorpusConfig
from .corpus import Corpus, bundled, load
from .errors import CharloomError, ConfigError
from .vocab import Vocab

__all__ = ["Batch", "BatchConfig", "CharloomError", "ConfigError", "Corpus", "CorpusConfig", "Data",
           "RecordBatches", "Stream", "StreamBatches", "Vocab", "bundled", "load", "prepare"]
__version__ = "0.1.0"
