"""Model inputs and outputs nested in lists, tuples and dicts: one walker for all of them."""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from pfa_lightning.errors import PFAError
from pfa_lightning.validation import is_int


def map_nested(obj: Any, tensor: Callable[[Tensor], Any], *, other: Callable[[Any], Any] = lambda x: x,
               sequence: Callable[[Any, list], Any] | None = None,
               mapping: Callable[[Any, dict], Any] | None = None) -> Any:
    """Rebuild ``obj`` with ``tensor(t)`` for every tensor and ``other(x)`` for any other leaf.

    Lists and tuples are rebuilt as their own type and dicts as dicts, unless ``sequence(obj, items)`` /
    ``mapping(obj, items)`` say how to build them from the mapped items.
    """
    def walk(x: Any) -> Any:
        if isinstance(x, Tensor):
            return tensor(x)
        if isinstance(x, (list, tuple)):
            items = [walk(v) for v in x]
            return sequence(x, items) if sequence is not None else type(x)(items)
        if isinstance(x, dict):
            items = {k: walk(v) for k, v in x.items()}
            return mapping(x, items) if mapping is not None else items
        return other(x)

    return walk(obj)


def tensors_in(obj: Any) -> Iterator[Tensor]:
    """Every tensor in ``obj``, depth first."""
    found: list[Tensor] = []
    map_nested(obj, found.append)
    return iter(found)


def clone_inputs(example_inputs: Any, n: int | None = None, device: torch.device | str | None = None) -> Any:
    """Detached copies of (the first ``n`` samples of) example inputs, moved to ``device``."""
    def clone(t: Tensor) -> Tensor:
        t = t[:n] if n is not None and t.dim() > 0 else t
        return t.detach().to(device) if device is not None else t.detach()

    return map_nested(example_inputs, clone)


def batch_of(example_inputs: Any, n: int) -> Any:
    """Detached model inputs of exactly ``n`` samples: the first ``n`` of ``example_inputs``, or its samples
    repeated in turn when it holds fewer (a latency at batch 64 is timed at batch 64, whatever the example).
    Batch-first inputs: every tensor whose first dimension is the first tensor's is cut or repeated along it."""
    if not is_int(n) or n < 1:
        raise PFAError(f"A batch of model inputs needs at least one sample, got batch size {n!r}.")
    have = batch_size(example_inputs)

    def take(t: Tensor) -> Tensor:
        if t.dim() == 0 or t.shape[0] != have:  # not batched along the first dimension: as it is
            return t.detach()
        return t.detach()[torch.arange(n, device=t.device) % have]

    return map_nested(example_inputs, take)


def batch_size(inputs: Any) -> int:
    """Number of samples in a batch of model inputs (the first dimension of its first tensor)."""
    first = next(tensors_in(inputs), None)
    if first is None or first.dim() == 0:
        raise PFAError(f"Cannot tell the batch size of model inputs of type {type(inputs).__name__}: "
                       "they must hold a tensor with a batch dimension.")
    return int(first.shape[0])


def model_inputs(batches: Iterable[Any], max_samples: int | None,
                 device: torch.device | str | None) -> Iterator[tuple[Any, int]]:
    """(model inputs on ``device``, their number of samples) for each batch, cut at ``max_samples`` in all."""
    seen = 0
    for batch in batches:
        x = first_input(batch)
        n = batch_size(x)
        if max_samples is not None and seen + n > max_samples:
            n = max_samples - seen
            x = clone_inputs(x, n)
        yield clone_inputs(x, device=device), n
        seen += n
        if max_samples is not None and seen >= max_samples:
            return


def takes_one_dict(model: torch.nn.Module, inputs: Any) -> bool:
    """Whether a dict of inputs goes to ``model`` as its one argument (``forward(self, batch)``, with or without
    ``**kwargs``) rather than as keywords: the dict's keys are not all named parameters of ``forward``, and it
    has exactly one required positional parameter, which no key names."""
    if not isinstance(inputs, dict):
        return False
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    named = {p.name for p in parameters if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    if set(inputs) <= named:
        return False
    required = [p for p in parameters if p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    return (len(required) == 1 and required[0].name not in inputs
            and required[0].kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))


def call_arguments(model: torch.nn.Module, inputs: Any) -> Any:
    """``inputs`` in the form Torch-Pruning unpacks (dicts as keywords, tuples/lists as positionals): a dict
    that ``model`` takes whole (see :func:`takes_one_dict`) is wrapped in a 1-tuple."""
    return (inputs,) if takes_one_dict(model, inputs) else inputs


def run_model(model: torch.nn.Module, inputs: Any) -> Any:
    """Call ``model`` the way Torch-Pruning does: dicts as keywords, tuples/lists as positionals; a dict goes
    whole to a ``forward`` that takes one argument."""
    inputs = call_arguments(model, inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


def first_input(batch: Any) -> Any:
    """The model input of a batch: the batch itself if a tensor, else its first element / ``batch["x"]``."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch:
        return batch[0]
    if isinstance(batch, dict):
        for key in ("x", "input", "inputs", "image", "images"):
            if key in batch:
                return batch[key]
    raise PFAError(
        f"Cannot find the model input in a batch of type {type(batch).__name__}; "
        "batches must be a tensor, a (input, target, ...) sequence, or a dict with key 'x'/'input'/'image'."
    )


_SHAPE_WORDS = re.compile(r"shape|size|channels|dimension|Expected \d+D|expected input", re.IGNORECASE)


_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _shape_error(err: BaseException) -> bool:
    return (isinstance(err, RuntimeError) and not isinstance(err, (NotImplementedError, _OUT_OF_MEMORY))
            and bool(_SHAPE_WORDS.search(str(err))))


def check_inputs_fit(model: nn.Module, example_inputs: Any, err: BaseException) -> None:
    """Raise a PFAError when ``model`` fails on ``example_inputs`` (eval mode, no gradients) with a shape error:
    inputs that do not fit it. Any other failure (a missing ``forward``, memory) is left to its own traceback."""
    if not _shape_error(err):
        return
    from pfa_lightning.state import evaluating

    try:
        with torch.no_grad(), evaluating(model):  # (restores every module's mode)
            run_model(model, clone_inputs(example_inputs, 2))
    except RuntimeError as failed:
        if not _shape_error(failed):
            return
        given = map_nested(example_inputs, lambda t: tuple(t.shape))
        first = str(failed).strip().splitlines()[0]
        raise PFAError(f"{type(model).__name__} fails on the inputs it was given (shapes {given}): {first}. Give "
                       "inputs shaped as its training batches.") from err


__all__ = ["batch_size", "call_arguments", "check_inputs_fit", "clone_inputs", "first_input", "map_nested",
           "model_inputs", "run_model", "takes_one_dict", "tensors_in"]
