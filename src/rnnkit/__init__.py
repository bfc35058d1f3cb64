"""rnnkit: recurrent sequence models from their equations, length-aware, nn.LSTM-compatible."""

__version__ = "0.1.0"

__all__: list[str] = []
