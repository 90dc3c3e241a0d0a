"""Rebuild a model folder from a GPU run's returned parts (PARTS_DIR/NAME-*.safetensors, fp16): the returned tensors
over the dense tiny.en's untouched ones (the embeddings, with train_embeddings: false).

    SPEECHPRUNE_CACHE=$PWD/.cache/speechprune .venv/bin/python tools/device/merge.py PARTS_DIR NAME OUT_DIR
"""
import json, shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file, safe_open

parts_dir, name, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
from speechprune.models.registry import resolve_model
dense_dir = resolve_model('whisper-tiny.en')
dense = load_file(dense_dir / 'model.safetensors')
got, cfg = {}, None
for f in sorted(parts_dir.glob(f'{name}-*.safetensors')):
    with safe_open(f, 'pt') as h:
        cfg, keys = h.metadata()['config'], h.metadata()['keys']
    got.update({k: v.float() for k, v in load_file(f).items()})
sd = {}
for k in json.loads(keys):
    t = got.get(k, dense.get(k))
    assert t is not None, k
    sd[k] = t.contiguous()
out.mkdir(parents=True, exist_ok=True)
for f in dense_dir.iterdir():
    if f.name not in ('model.safetensors', 'speechprune_source.json', 'config.json'):
        shutil.copy(f, out / f.name)
(out / 'config.json').write_text(cfg)
save_file(sd, out / 'model.safetensors', metadata={'format': 'pt'})
print(out, len(got), 'returned tensors,', len(sd) - len(got), 'from dense')
