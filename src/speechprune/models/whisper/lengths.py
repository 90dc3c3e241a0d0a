"""Length-adaptive Whisper: the encoder reads a clip's real log-mel frames rounded up to a length bucket instead of
the 30 s window (issue 18). Pure arithmetic plus the one config key that says a model was adapted to it.

Whisper's stem turns ``2 P`` log-mel frames (10 ms each) into ``P`` encoder positions (conv stride 2), and the
learned position table holds ``max_source_positions`` (1500) rows; a bucket is a number of encoder positions, and
the encoder reads the first ``2 P`` frames of the (30 s padded) features with the table's first ``P`` rows. A batch
is read at the bucket of its longest item. The buckets a model was adapted to (``recovery.length_adaptive``) are
kept in its ``config.json`` under ``speechprune_length_buckets``; a folder without the key (every stock one) reads
the full window. The last bucket is always the full window, so every window fits one.
"""

from __future__ import annotations

from typing import Sequence

from speechprune.errors import ConfigError

LENGTH_KEY = "speechprune_length_buckets"  # config attribute / config.json key: ascending encoder positions
FRAMES_PER_POSITION = 2  # conv2 has stride 2: 20 ms of audio per encoder position


def check_buckets(buckets: Sequence[int], max_positions: int) -> tuple[int, ...]:
    """``buckets`` as an ascending tuple of distinct positive ints whose last is ``max_positions`` (the full window:
    every window must fit a bucket), else a ``ConfigError`` saying which rule fails."""
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence):
        raise ConfigError(f"length buckets must be a list of encoder positions, got {buckets!r}")
    if not buckets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets):
        raise ConfigError(f"length buckets must be positive integers (encoder positions), got {list(buckets)}")
    if any(a >= b for a, b in zip(buckets, buckets[1:])):
        raise ConfigError(f"length buckets must ascend without repeats, got {list(buckets)}")
    if buckets[-1] != max_positions:
        raise ConfigError(f"the last length bucket must be the full window ({max_positions} positions), got "
                          f"{buckets[-1]}")
    return tuple(int(b) for b in buckets)


def positions_for(frames: int) -> int:
    """Encoder positions that cover ``frames`` real log-mel frames (``ceil(frames / 2)``, at least 1)."""
    return max(1, -(-int(frames) // FRAMES_PER_POSITION))


def bucket_for(frames: int, buckets: Sequence[int]) -> int:
    """The smallest bucket (encoder positions) that holds ``frames`` frames; the last (the full window) for longer."""
    need = positions_for(frames)
    return next((b for b in buckets if b >= need), buckets[-1])


def batch_bucket(frames: Sequence[int] | None, buckets: Sequence[int]) -> int:
    """The bucket of a batch: its longest item's; the full window (the last bucket) when ``frames`` is unknown."""
    if frames is None or len(frames) == 0:
        return buckets[-1]
    return bucket_for(max(int(f) for f in frames), buckets)


def cut_features(features, frames: Sequence[int] | None, buckets: Sequence[int]):
    """``features [B, n_mels, 2 * full]`` (numpy or torch) cut to ``2 * batch_bucket`` frames (a view, no copy)."""
    return features[..., : FRAMES_PER_POSITION * batch_bucket(frames, buckets)]


def length_buckets(config) -> tuple[int, ...] | None:
    """The buckets a model (its config object) was adapted to, or ``None`` (it reads the full window). A bad value
    raises ``ConfigError``."""
    value = getattr(config, LENGTH_KEY, None)
    if value is None:
        return None
    return check_buckets(list(value) if isinstance(value, tuple) else value, int(config.max_source_positions))


def set_length_buckets(model, buckets: Sequence[int] | None) -> None:
    """Mark ``model`` (a ``WhisperForConditionalGeneration``) as reading its batches at ``buckets`` (checked against
    its position table), or back to the full window with ``None``. ``models.checkpoint.save_pruned`` writes the mark
    into ``config.json``; loading reads it back."""
    if buckets is None:
        if hasattr(model.config, LENGTH_KEY):
            delattr(model.config, LENGTH_KEY)
        return
    setattr(model.config, LENGTH_KEY, list(check_buckets(list(buckets), int(model.config.max_source_positions))))
