"""Prepare the folders that three back-to-back device calls carry for a GPU recovery (see docs/design.md, "Long
recovery on a GPU"): .xfa = dense tiny.en fp16 half 1 + model files + wheels; .xfb = half 2 + asterisk (FLAC) +
gpu.py; .xfc = N synthetic telephone clips (8 kHz FLAC) + gpu.py. Add /.xfa/ /.xfb/ /.xfc/ /.whl/ to .git/info/exclude
and download the wheels to .whl first (the device README's pip download line, Python 3.12): pydantic, pydantic_core,
annotated-types, typing-inspection, jiwer, rapidfuzz, soundfile, cffi, pycparser, soxr, typing_extensions.

    SPEECHPRUNE_CACHE=$PWD/.cache/speechprune .venv/bin/python tools/device/prep.py 1200
"""
import hashlib, io, json, os, shutil, sys, tarfile
from pathlib import Path
import soundfile as sf, soxr, torch
from safetensors.torch import load_file

root = Path(__file__).resolve().parents[2]
N_SYNTH = int(sys.argv[1]) if len(sys.argv) > 1 else 1200
from speechprune.paths import cache_dir

from gpu import digest  # the check gpu.py repeats on the device (this folder is on sys.path)
cache = cache_dir()
for d in ('.xfa', '.xfb', '.xfc'):
    shutil.rmtree(root / d, ignore_errors=True); (root / d).mkdir()

# 1. the dense model, fp16 (lossless: the CT2 source is fp16), split in two byte halves
src = cache / 'models/whisper-tiny.en'
sd = load_file(src / 'model.safetensors')
half = {k: v.half() for k, v in sd.items()}
assert all(torch.equal(half[k].float(), v) for k, v in sd.items()), 'not fp16-exact'
from safetensors.torch import save
b = save(half)
(root / '.xfa/model.part1').write_bytes(b[: len(b) // 2]); (root / '.xfb/model.part2').write_bytes(b[len(b) // 2:])
meta = {'digest': digest(sd), 'sha_fp16': hashlib.sha256(b).hexdigest()}
(root / '.xfa/model').mkdir()
for f in src.iterdir():
    if f.name != 'model.safetensors': shutil.copy(f, root / '.xfa/model' / f.name)
(root / '.xfa/model/digest.json').write_text(json.dumps(meta))
# 2. wheels
shutil.copytree(root / '.whl', root / '.xfa/whl')
# 3. asterisk: every prompt as FLAC (lossless), the text file
snd = Path(os.path.realpath('/usr/share/asterisk/sounds/en'))
with tarfile.open(root / '.xfb/asterisk.tar', 'w') as tar:
    for w in sorted(snd.rglob('*.wav')):
        x, sr = sf.read(w, dtype='int16')
        bio = io.BytesIO(); sf.write(bio, x, sr, format='FLAC', subtype='PCM_16')
        ti = tarfile.TarInfo(str(w.relative_to(snd).with_suffix('.flac'))); ti.size = len(bio.getvalue()); bio.seek(0)
        tar.addfile(ti, bio)
shutil.copy('/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz', root / '.xfb/core-sounds-en.txt.gz')
# 4. synthetic telephone clips: 8 kHz FLAC (they were band-limited at 8 kHz), half in .xfb, half in .xfc
sd_ = cache / 'synth/synth-telephone'
recs = [json.loads(l) for l in open(sd_ / 'manifest.jsonl')][:N_SYNTH]
out = []
for i, r in enumerate(recs):
    part = '.xfc'
    x, sr = sf.read(sd_ / r['audio'], dtype='float32')
    y = soxr.resample(x, sr, 8000)
    (root / part / 'synth').mkdir(exist_ok=True)
    sf.write(root / part / 'synth' / f"{r['id']}.flac", y, 8000, subtype='PCM_16')
    out.append({**r, 'audio': f"{r['id']}.flac"})
(root / '.xfc/synth.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in out))
shutil.copy(root / '.xfc/synth.jsonl', root / '.xfb/synth.jsonl')
for d in ('.xfb', '.xfc'):
    shutil.copy(root / 'tools/device/gpu.py', root / d / 'gpu.py')
print(meta, len(out))
