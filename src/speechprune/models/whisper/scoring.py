"""Whisper's reference scorer (``models.family.ReferenceScorer``): a damaged Whisper model scored on fixed
utterances, for ablation and sensitivity analysis.

``WhisperScorer`` prepares once: the log-mel features, the teacher-forcing batches on the *reference* texts (prompt
and labels built by ``TorchWhisper.labelled_batches``, the same prompt the decoders use), and the dense model's
encoder output per batch. A score then reuses that encoder output whenever the encoder is unchanged (an ablated
decoder layer), so a decoder point costs only decoder passes.

* ``proxy``: teacher-forced cross-entropy on the references, nats per label token (lower = better);
* ``records``: greedy hypotheses, at most ``max_new_tokens`` per utterance (default: twice the longest reference + 8,
  at most 224) so a broken model cannot spend 224 steps of babble per utterance; a longer babble would only add
  more insertions.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError
from ..decoding import DecodeOptions
from .backend import TorchWhisper

Changed = dict  # stack -> index of its first changed layer (a skipped layer: the index it had)
ALL: Changed = {"encoder": 0, "decoder": 0}


def _encoder_layers(model):
    """The ``nn.ModuleList`` of the encoder's layers and its ``(parent, attribute)``, found through the adapter's
    weight sites (the list whose first item holds encoder layer 0's weights), not by module name."""
    from ..adapters import adapter_for

    adapter = adapter_for(model)
    site = next(s for s in adapter.weight_sites(model) if s.stack == "encoder" and s.layer == 0)
    n = adapter.n_layers(model, "encoder")
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == n and any(
                    m is site.module for m in child[0].modules()):
                return child, parent, name
    raise RuntimeError("cannot find the encoder's layer list")


def _n_encoder_layers(model) -> int:
    from ..adapters import adapter_for

    return adapter_for(model).n_layers(model, "encoder")


def _hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


class _recording_inputs:
    """Within the block, record the hidden states entering each encoder layer (``dict`` layer -> tensor)."""

    def __init__(self, model, enabled: bool = True):
        self.model, self.enabled, self.seen, self.hooks = model, enabled, {}, []

    def __enter__(self) -> dict:
        if self.enabled:
            layers, _, _ = _encoder_layers(self.model)
            for i, layer in enumerate(layers):
                def hook(mod, args, kwargs, i=i):
                    self.seen[i] = _hidden(args, kwargs).detach().clone()
                self.hooks.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        return self.seen

    def __exit__(self, *exc) -> None:
        for h in self.hooks:
            h.remove()


class _starting_at:
    """Within the block, the encoder runs layers ``start..`` only, the first fed ``cached`` instead of the stem's
    output (the layers before are left out of the list for the block's length). ``start`` 0 / no cache: as is."""

    def __init__(self, model, start: int, cached: torch.Tensor | None):
        self.model, self.start, self.cached = model, start, cached
        self.undo = None

    def __enter__(self) -> None:
        if self.cached is None:
            return
        layers, parent, name = _encoder_layers(self.model)
        first = layers[self.start]
        hook = first.register_forward_pre_hook(
            lambda mod, args, kwargs: ((self.cached,) + tuple(args[1:]), kwargs) if args
            else (args, {**kwargs, "hidden_states": self.cached}), with_kwargs=True)
        setattr(parent, name, torch.nn.ModuleList(list(layers)[self.start:]))

        def undo():
            hook.remove()
            setattr(parent, name, layers)
        self.undo = undo

    def __exit__(self, *exc) -> None:
        if self.undo is not None:
            self.undo()


class WhisperScorer:
    """Proxy loss and greedy hypotheses of any model of the dense model's architecture (damaged copies included) on
    ``utterances`` (readable within 30 s, with reference texts); the dense encoder output is computed once and
    reused when the encoder is unchanged, and with ``cache_layers`` the input of every encoder layer too (memory:
    layers x utterances x 1500 x d_model floats), so a damaged encoder layer ``i`` costs layers ``i..`` (and the
    convolution stem) only."""

    def __init__(self, backend: TorchWhisper, utterances: list, batch_size: int = 8,
                 max_new_tokens: int | None = None, cache_layers: bool = True, progress: bool = False):
        self.backend = backend
        self.utterances = list(utterances)
        self.batch_size = batch_size
        self.batches = backend.labelled_batches(self.utterances, batch_size, DecodeOptions(), pseudo_labels=False,
                                                progress=progress)
        if sum(len(b["labels"]) for b in self.batches) != len(self.utterances):
            raise ConfigError("some utterances could not be turned into teacher-forcing batches")
        longest = max(int((b["labels"] != -100).sum(dim=1).max()) for b in self.batches)
        self.options = DecodeOptions(max_new_tokens=max_new_tokens or min(224, 2 * longest + 8))
        self.device = backend.device
        self.cache_layers = cache_layers
        self.dense_encoder, self.layer_inputs = [], []
        for b in self.batches:
            with _recording_inputs(backend.model, cache_layers) as seen:
                self.dense_encoder.append(self._encode(backend.model, b))
            self.layer_inputs.append(seen)

    @torch.inference_mode()
    def _encode(self, model, batch, start: int = 0, cached: torch.Tensor | None = None) -> torch.Tensor:
        dtype = next(model.parameters()).dtype
        x = batch["input_features"].to(self.device, dtype)
        with _starting_at(model, start, cached):
            return model.get_encoder()(input_features=x).last_hidden_state

    def _encoder_outputs(self, model, changed: Changed):
        first = changed.get("encoder")
        for b, enc, inputs in zip(self.batches, self.dense_encoder, self.layer_inputs):
            if first is None:
                yield b, enc
            elif first in inputs and first < _n_encoder_layers(model):
                yield b, self._encode(model, b, first, inputs[first])  # layers before ``first`` are the dense ones
            else:
                yield b, self._encode(model, b)

    @torch.inference_mode()
    def proxy(self, model, changed: Changed = ALL) -> float:
        """Mean cross-entropy (nats per reference token) of ``model`` teacher-forced on the references.
        ``changed`` maps each changed stack to its first changed layer: the dense encoder output is reused when the
        encoder is unchanged, and the dense input of its first changed layer when it is."""
        total, n = 0.0, 0
        for b, enc in self._encoder_outputs(model, changed):
            ids, labels = b["decoder_input_ids"].to(self.device), b["labels"].to(self.device)
            logits = model(encoder_outputs=(enc,), decoder_input_ids=ids).logits.float()
            mask = labels != -100
            total += float(torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum"))
            n += int(mask.sum())
        return total / n

    def records(self, model, changed: Changed = ALL) -> list[dict]:
        """Greedy hypotheses of ``model`` as evaluation records, one per utterance (encoder outputs reused as for
        ``proxy``)."""
        be = self.backend if model is self.backend.model else self.backend.with_model(model)
        records, k = [], 0
        for _, enc in self._encoder_outputs(model, changed):
            utts = self.utterances[k : k + enc.shape[0]]
            k += len(utts)
            out = be.decode(enc, [u.language for u in utts], [u.task for u in utts], self.options)
            for u, toks, lang in zip(utts, out.tokens, out.languages):
                records.append({"id": u.id, "audio": str(u.audio), "language": lang, "task": u.task or "transcribe",
                                "reference": u.text, "hypothesis": be.decode_text(toks)})
        return records
