"""mica from Python: read datasets, train, predict and score MICA / MulT models with
numpy arrays in and out. The numbers are the ``mica`` command line's: the same Rust
core computes them.

>>> import mica
>>> data = mica.synth(size="small", seed=0, n_train=64, n_valid=16, n_test=16)
>>> res = mica.train(data, variant="mica", seeds=[1111], out="runs/demo", epochs=2)
>>> model = mica.load("runs/demo/best")
>>> pred = model.predict(data["test"]["text"], data["test"]["audio"], data["test"]["vision"])
>>> mica.metrics(pred, data["test"]["labels"], task="mosi")["mult"]["mae"]

Threads: like the CLI, mica computes on one CPU thread unless ``CANDLE_NUM_THREADS``
(and ``RAYON_NUM_THREADS``) are set before ``import mica``.
"""

from __future__ import annotations

import os

# The CLI's default (--threads 1): on small shapes and busy machines candle's spinning
# pool costs more than it gains. Read once, when the first model runs.
for _k, _v in (
    ("CANDLE_NUM_THREADS", "1"),
    ("RAYON_NUM_THREADS", "1"),
    ("CANDLE_BARRIER_POOL_SPIN_LIMIT", "64"),
):
    os.environ.setdefault(_k, _v)

import json
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import _mica
from ._errors import (
    CheckpointError,
    ConfigError,
    DataError,
    MetricsError,
    MicaError,
    TrainingError,
    UnsafePickleError,
)

__version__: str = _mica.__version__

PathLike = Union[str, "os.PathLike[str]"]
Split = Dict[str, Any]
"""One split: ``text``, ``audio``, ``vision`` (float32 ``[N, T, D]``, left zero-padded),
``labels`` (float32 ``[N]`` sentiment, or uint8 ``[N, 4]`` IEMOCAP emotions), ``ids``
(list of str or None), ``*_lengths`` (int64 ``[N]``) and, where known, ``*_intervals``
(float32 ``[N, T, 2]``: each element's start and end in seconds, NaN for padding)."""
Dataset = Dict[str, Split]
"""Splits by name (``train``, ``valid``, ``test``)."""
ProgressCallback = Callable[[Dict[str, Any]], Any]

BUILTIN_DATASETS = ("synth-small", "synth-mosi", "synth-mosei", "synth-iemocap")
MODALITIES = ("text", "audio", "vision")


def read_dataset(path: PathLike, *, drop_nonfinite_labels: bool = False) -> Dataset:
    """Reads any dataset mica reads: a MulT pickle (``*_data_noalign.pkl``), an MMSA
    pickle (``unaligned_50.pkl``) or a mica dataset directory (``mica convert``,
    ``mica synth``, ``mica import-csd``).

    Pickles are parsed by mica's own reader, which executes nothing: a pickle asking for
    any global besides numpy's array constructors raises :class:`UnsafePickleError`.
    Non-finite feature values become 0; non-finite labels raise :class:`DataError`
    unless ``drop_nonfinite_labels`` (those samples are then dropped, noted on stderr).

    Returns ``{split: {key: array}}`` (see :data:`Split`).
    """
    return _mica.read_dataset(os.fspath(path), drop_nonfinite_labels)


def synth(size: str = "small", seed: int = 0, **options: Any) -> Dataset:
    """The built-in synthetic asynchronous benchmark (as ``mica synth``), with the
    ground-truth timing of every element in ``*_intervals``.

    ``size``: ``small``, ``mosi``, ``mosei`` or ``iemocap`` (shapes of the real data).
    ``options``: any generator setting, e.g. ``n_train=200, n_valid=50, n_test=50,
    p_flip=0.5, jitter=0.3, max_offset_s=0.4, warp=0.3, noise=0.1, discrepancy=1.0``.
    The same seed and options give bit-identical arrays.
    """
    over = json.dumps(options) if options else None
    return _mica.synth(size, int(seed), over)


def _f64(x: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float64))


def metrics(pred: Any, labels: Any, task: str = "mosi") -> Dict[str, Any]:
    """MulT's and MMSA's metric sets, exactly as ``mica metrics`` computes them.

    ``task="mosi"`` / ``"mosei"``: ``pred`` and ``labels`` hold one sentiment score per
    sample (``[N]`` or ``[N, 1]``); returns ``{"mult": {...}, "mmsa": {...}}`` (MMSA's
    values unrounded). ``task="iemocap"``: ``pred`` ``[N, 8]`` logits, ``labels``
    ``[N, 4]`` 0/1; returns ``{"mult": {emotion: {"f1", "acc"}}, "mult_mean": {...}}``.
    """
    p, l = _f64(pred), _f64(labels)
    if task in ("mosi", "mosei"):
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        if l.ndim in (2, 3) and l.size == l.shape[0]:
            l = l.reshape(-1)
    return json.loads(_mica.metrics(np.ascontiguousarray(p), np.ascontiguousarray(l), task))


def _f32(x: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


class Model:
    """A trained model (see :func:`load`)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @property
    def config(self) -> Dict[str, Any]:
        """The full config the model was trained with (``config.json``)."""
        return self._inner.config

    @property
    def path(self) -> str:
        """The checkpoint directory."""
        return os.fspath(self._inner.path)

    def _intervals(self, intervals: Optional[Sequence[Any]]) -> Optional[List[np.ndarray]]:
        if intervals is None:
            return None
        if len(intervals) != 3:
            raise DataError("intervals: give (text, audio, vision) interval arrays [N, T, 2]")
        return [_f32(x) for x in intervals]

    def predict(
        self,
        text: Any,
        audio: Any,
        vision: Any,
        batch_size: Optional[int] = None,
        intervals: Optional[Sequence[Any]] = None,
    ) -> np.ndarray:
        """Eval-mode predictions (as ``mica predict``, bit for bit): float32 ``[N]``
        sentiment scores, or ``[N, 8]`` IEMOCAP logits (2 per emotion).

        ``text``, ``audio``, ``vision``: ``[N, T, D]`` arrays (left zero-padded, as
        :func:`read_dataset` returns them). ``batch_size``: default the config's.
        ``intervals``: the three ``*_intervals`` arrays, needed by models trained with
        ``positions="time"``.
        """
        out = self._inner.predict(
            _f32(text), _f32(audio), _f32(vision), batch_size, self._intervals(intervals)
        )
        return out[:, 0] if out.shape[1] == 1 else out

    def attention(
        self,
        text: Any,
        audio: Any,
        vision: Any,
        sample: int = 0,
        block: str = "A->L",
        layer: Optional[int] = None,
        head: Optional[int] = None,
        intervals: Optional[Sequence[Any]] = None,
    ) -> Dict[str, Any]:
        """One sample's crossmodal attention map, as ``mica attention`` draws it.

        ``block``: ``"SOURCE->TARGET"`` (``"A->L"``: text attends to audio; ``"A-L"``
        works too). ``layer``: 1-based, default the last; ``head``: default the mean
        over heads. Returns ``matrix`` (float32 ``[real target steps, real source
        steps]``), ``truth`` (bool, same shape: elements that truly co-occur, when
        ``intervals`` are given) and ``corr_acc``, ``layer``, ``layers``, ``heads``.
        """
        return self._inner.attention(
            _f32(text),
            _f32(audio),
            _f32(vision),
            int(sample),
            block,
            layer,
            head,
            self._intervals(intervals),
        )

    def __repr__(self) -> str:
        return repr(self._inner)


def load(checkpoint: PathLike) -> Model:
    """Loads a checkpoint directory (a run's ``best`` / ``last``, a run directory for its
    best weights, or ``mica import-mult`` output). Every file is checked against its
    ``checkpoint.json``; weights holding NaN or infinity are refused."""
    return Model(_mica.load(os.fspath(checkpoint)))


def _labels(x: Any) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 3 and a.shape[1:] == (1, 1):  # MulT's [N, 1, 1] sentiment
        a = a.reshape(-1)
    return _f32(a)


def _split_arrays(name: str, s: Mapping[str, Any]) -> Dict[str, Any]:
    if not isinstance(s, Mapping):
        raise DataError(f"split '{name}': expected a dict of arrays, got {type(s).__name__}")
    out: Dict[str, Any] = {}
    for k, v in s.items():
        if k in MODALITIES or k.endswith("_intervals"):
            out[k] = _f32(v)
        elif k == "labels":
            out[k] = _labels(v)
        elif k == "ids":
            out[k] = None if v is None else [
                x.decode() if isinstance(x, bytes) else str(x) for x in list(v)
            ]
    return out


def _argv(options: Mapping[str, Any]) -> List[str]:
    argv: List[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        if key == "set":
            items = value.items() if isinstance(value, Mapping) else (
                [value] if isinstance(value, str) else value
            )
            for it in items:
                argv += ["--set", it if isinstance(it, str) else f"{it[0]}={it[1]}"]
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return argv


class _Progress:
    """Progress events to a tqdm bar (when tqdm is installed and ``progress``) and to the
    user's callback."""

    def __init__(self, callback: Optional[ProgressCallback], progress: bool) -> None:
        self.callback = callback
        self.bar: Any = None
        self.tqdm: Any = None
        if progress:
            try:
                from tqdm.auto import tqdm

                self.tqdm = tqdm
            except ImportError:
                self.tqdm = None

    def __call__(self, ev: Dict[str, Any]) -> None:
        if self.tqdm is not None:
            if ev["kind"] == "batch":
                if self.bar is None:
                    self.bar = self.tqdm(
                        total=ev["samples_total"],
                        desc=f"seed {ev['seed']} epoch {ev['epoch']}/{ev['epochs']}",
                        unit="sample",
                        leave=False,
                    )
                self.bar.update(ev["samples"] - self.bar.n)
                self.bar.set_postfix(loss=f"{ev['loss']:.4f}", refresh=False)
            else:
                self.close()
                self.tqdm.write(
                    f"seed {ev['seed']} epoch {ev['epoch']}/{ev['epochs']}: "
                    f"train {ev['train_loss']:.4f} valid {ev['valid_loss']:.4f} "
                    f"lr {ev['lr']:.1e} ({ev['seconds']:.1f}s)"
                )
        if self.callback is not None:
            self.callback(ev)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def train(
    data: Union[PathLike, Mapping[str, Mapping[str, Any]]] = "synth-small",
    variant: Optional[str] = None,
    preset: Optional[str] = None,
    seeds: Iterable[int] = (1111,),
    out: Optional[PathLike] = None,
    *,
    callback: Optional[ProgressCallback] = None,
    progress: bool = True,
    resume: Optional[PathLike] = None,
    **options: Any,
) -> Dict[str, Any]:
    """Trains one run per seed, exactly as ``mica train`` (same config, same numbers),
    and evaluates the best-on-validation weights on test.

    ``data``: a built-in name (``synth-small``, ``synth-mosi``, ...), a dataset path
    (MulT / MMSA pickle, mica directory) or a dict of splits of numpy arrays (as
    :func:`read_dataset` / :func:`synth` return; ``train``, ``valid`` and ``test``).
    ``variant``: ``mult``, ``backbone``, ``mmd``, ``mica``, ``mica-nopropagate``,
    ``ef-lstm``, ``lf-lstm``, ``mfm``, ``gmfn``, ``raven``, ``mctn`` (default ``mica``;
    ``mfm`` and ``gmfn`` need word-aligned data or ``align="nearest"``). ``preset``:
    ``mosi``, ``mosei``, ``iemocap``, ``synth-small``, ``mult-official`` (default from
    the data).
    ``out``: run directory (several seeds: one ``seed-S`` directory each plus
    ``summary.json``); default ``runs/<data>-<variant>-<time>``.
    ``options``: every ``mica train`` flag, underscores for dashes, e.g. ``epochs=2,
    batch_size=16, lr=1e-3, alpha=0.8, d=32, kernels=(3, 3, 3), no_attn_mask=True,
    dataset="mosei", task="mosi", config="cfg.toml", set={"model.relu_dropout": 0.2}``.
    ``resume``: continue the stopped run in this directory (its saved config; only
    ``epochs`` may change).

    Progress: a tqdm bar when tqdm is installed (``progress=False`` hides it), and
    ``callback(event)`` after every batch (``kind="batch"``: ``seed, epoch, epochs,
    samples, samples_total, loss``) and epoch (``kind="epoch"``: ``seed, epoch, epochs,
    train_loss, train_task, train_lm, train_le, valid_loss, lr, seconds``). The GIL is
    released while training. Ctrl-C (or an exception raised by the callback) stops the
    run at the next batch and is re-raised; the last checkpoint (the last finished
    epoch) stays in the run directory, and ``resume=`` continues it.

    Returns ``{"runs": [{"seed", "out", "test", "valid", "best_epoch",
    "best_valid_loss", "history"}], "test": {"mult.mae": {"mean", "std", "std_sample",
    "n"}, ...}, "out"}`` (std: population, ddof 0, as MMSA reports it).
    """
    seed_list = [int(s) for s in ([seeds] if isinstance(seeds, int) else seeds)]
    for reserved in ("seed", "quiet", "stop_after_epochs", "data", "threads"):
        if reserved in options:
            raise ConfigError(
                f"train: option {reserved!r} is not taken here"
                + (" (use seeds=[...])" if reserved == "seed" else "")
            )
    if resume is not None:
        extra = sorted(k for k in options if k not in ("epochs", "dataset", "data_seed", "drop_nonfinite_labels"))
        if extra or variant is not None or preset is not None:
            raise ConfigError(
                f"train: a resumed run keeps its config; only epochs may change (got {', '.join(extra + [k for k, v in (('variant', variant), ('preset', preset)) if v is not None])})"
            )
    argv = _argv({"variant": variant, "preset": preset, **options})
    arrays: Optional[Dict[str, Any]] = None
    if isinstance(data, Mapping):
        arrays = {str(k): _split_arrays(str(k), v) for k, v in data.items()}
    else:
        path = os.fspath(data)
        if path in BUILTIN_DATASETS and not os.path.exists(path):
            argv += ["--dataset", path]
        else:
            argv += ["--data", path]
    bar = _Progress(callback, progress)
    try:
        return _mica.train(
            arrays,
            argv,
            seed_list,
            None if out is None else os.fspath(out),
            None if resume is None else os.fspath(resume),
            bar,
        )
    finally:
        bar.close()


__all__ = [
    "read_dataset",
    "synth",
    "metrics",
    "load",
    "train",
    "Model",
    "MicaError",
    "DataError",
    "UnsafePickleError",
    "ConfigError",
    "CheckpointError",
    "MetricsError",
    "TrainingError",
    "BUILTIN_DATASETS",
]
