"""Type stubs of the Rust extension `mica._mica` (use the wrappers in `mica`)."""

from os import PathLike
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__version__: str

def read_dataset(path: str | PathLike[str], drop_nonfinite_labels: bool = ...) -> Dict[str, Dict[str, Any]]: ...
def synth(size: str = ..., seed: int = ..., overrides: Optional[str] = ...) -> Dict[str, Dict[str, Any]]: ...
def metrics(pred: np.ndarray, labels: np.ndarray, task: str) -> str: ...
def load(checkpoint: str | PathLike[str]) -> Model: ...
def train(
    data: Optional[Dict[str, Dict[str, Any]]],
    argv: List[str],
    seeds: List[int],
    out: Optional[str],
    resume: Optional[str],
    callback: Optional[Any],
) -> Dict[str, Any]: ...

class Model:
    @property
    def config(self) -> Dict[str, Any]: ...
    @property
    def path(self) -> str: ...
    def predict(
        self,
        text: np.ndarray,
        audio: np.ndarray,
        vision: np.ndarray,
        batch_size: Optional[int] = ...,
        intervals: Optional[Sequence[np.ndarray]] = ...,
    ) -> np.ndarray: ...
    def attention(
        self,
        text: np.ndarray,
        audio: np.ndarray,
        vision: np.ndarray,
        sample: int = ...,
        block: str = ...,
        layer: Optional[int] = ...,
        head: Optional[int] = ...,
        intervals: Optional[Sequence[np.ndarray]] = ...,
    ) -> Dict[str, Any]: ...
