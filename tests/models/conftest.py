"""Fixtures for tests/models: a tiny random Whisper with a minimal tokenizer, the cache, a real clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

AGENT_PASS = Path("/usr/share/asterisk/sounds/en/agent-pass.wav")

# The layout of an English-only Whisper vocabulary, shrunk: 256 byte tokens, then the special tokens.
TINY_SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|de|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
TINY_VOCAB = 300  # 256 bytes + 10 specials + 34 timestamp tokens (added by the CT2 converter)
EOT, SOT, NO_TIMESTAMPS = 256, 257, 265


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tiny_tokenizer(path: Path) -> Path:
    """A byte-level BPE tokenizer.json without merges, with Whisper's special tokens at ids 256..265."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    chars = [c for _, c in sorted(_bytes_to_unicode().items())]
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_SPECIALS])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def make_tiny_whisper(seed: int = 0):
    """A random WhisperForConditionalGeneration (d 64, 2+2 layers, 4 heads, FFN 128) with every weight random."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=TINY_VOCAB,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=64,
        decoder_start_token_id=SOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        suppress_tokens=[1, 2, 7],
        begin_suppress_tokens=[220, EOT],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.generation_config = GenerationConfig(
        decoder_start_token_id=SOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        max_length=config.max_target_positions,
        suppress_tokens=[1, 2, 7],
        begin_suppress_tokens=[220, EOT],
        no_timestamps_token_id=NO_TIMESTAMPS,
        alignment_heads=[[1, 0], [1, 3]],
        is_multilingual=False,
    )
    return model


def write_tiny_whisper_folder(root: Path):
    """``(model, folder)``: ``make_tiny_whisper()`` saved with the tiny tokenizer as a Hugging Face folder
    ``root/hf`` (the tokenizer source goes to ``root/tok``)."""
    from transformers import WhisperTokenizerFast

    model = make_tiny_whisper()
    folder = root / "hf"
    model.save_pretrained(folder)
    tok = write_tiny_tokenizer(root / "tok" / "tokenizer.json")
    WhisperTokenizerFast(tokenizer_file=str(tok), pad_token="<|endoftext|>").save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="session")
def tiny_ct2(tmp_path_factory):
    """``(hf_model, hf_dir, ct2_dir)``: the tiny random model saved as HF and converted by ctranslate2 (float32)."""
    import ctranslate2.converters

    root = tmp_path_factory.mktemp("tiny")
    model, hf_dir = write_tiny_whisper_folder(root)
    ct2_dir = root / "ct2"
    ctranslate2.converters.TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"]).convert(str(ct2_dir))
    return model, hf_dir, ct2_dir


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("speechprune_cache")


@pytest.fixture
def cache(_session_cache, monkeypatch) -> Path:
    """``SPEECHPRUNE_CACHE`` pointed at one folder shared by this session's tests (set per test only)."""
    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(_session_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return _session_cache


@pytest.fixture(scope="session")
def agent_pass_16k() -> np.ndarray:
    """The Debian asterisk prompt agent-pass.wav ("Please enter your password..."), resampled to 16 kHz."""
    if not AGENT_PASS.is_file():
        pytest.skip(f"Debian asterisk sounds absent ({AGENT_PASS}): apt-get install asterisk-core-sounds-en-wav")
    import soundfile as sf
    import soxr

    audio, sr = sf.read(str(AGENT_PASS), dtype="float32", always_2d=False)
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    return soxr.resample(audio, sr, 16000, quality="HQ").astype(np.float32)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _strip_prompt(row: list[int], prompt: list[int]) -> list[int]:
    return row[len(prompt) :] if row[: len(prompt)] == prompt else row


@pytest.fixture(scope="session")
def strip_prompt():
    """``f(row, prompt)``: transformers 5 returns generated tokens only; older versions prepend the prompt."""
    return _strip_prompt


@pytest.fixture(scope="session")
def tiny_ids() -> dict[str, int]:
    """Special-token ids of the tiny tokenizer (English-only layout)."""
    return {"eot": EOT, "sot": SOT, "no_timestamps": NO_TIMESTAMPS, "en": 258}


from tiny_models import build_tiny, make_tiny_wav2vec2, randomize  # noqa: E402,F401


@pytest.fixture(scope="session")
def build():
    """``build(family, seed=0, **config_overrides)`` -> a tiny random model (see ``build_tiny``)."""
    return build_tiny


@pytest.fixture
def tiny_whisper_d64():
    """A fresh ``make_tiny_whisper()`` (vocabulary 300, matching ``tiny_processor``)."""
    return make_tiny_whisper()


@pytest.fixture(scope="session")
def tiny_processor(tmp_path_factory):
    """A real ``WhisperProcessor`` over the tiny byte-level tokenizer (vocabulary 300) and an 80-mel extractor."""
    from speechprune.models.whisper.convert import build_processor

    return build_processor(write_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json"), 80)
