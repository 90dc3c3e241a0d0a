"""GPU recovery driver: runs on the device machine, from the repository root, once the three folders of prep.py are
copied to $SP (/root/sp); see docs/design.md, "Long recovery on a GPU". Subcommands:
  setup          rebuild the dense model there (fp16 halves -> fp32 safetensors, digests checked), asterisk WAVs
  probe          the candidates with a few recovery steps, concurrently: seconds per step -> $SP/probe.json
  train [TAG]    the candidates concurrently, steps from $STEPS ("medium:4500,fastdec:4000") or as many as fit $BUDGET
                 seconds by the probe; models in $SP/TAG/<name>/prune/step-1
  pack TAG NAME  the tensors of a trained model that differ from the dense one, fp16, in <= 15.5 MB files -> $OUT
Calls used (each must end within 10 minutes; a training that may not is started with `setsid nohup ... &` and
waited on in the same call, then packed in the next):
  1 carry .xfa: mkdir -p /root/sp/synth; cp -r .xfa/* /root/sp/; pip install --target /tmp/site /root/sp/whl/*.whl
  2 carry .xfb: cp .xfb/* into /root/sp (synth.jsonl into synth/); PYTHONPATH=/tmp/site python3 /root/sp/gpu.py setup
  3 carry .xfc: cp .xfc/synth/* .xfc/synth.jsonl /root/sp/synth/; STEPS=... python3 /root/sp/gpu.py train
"""
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SP = Path(os.environ.get('SP', '/root/sp'))
OUT = Path(os.environ.get('OUT', '/root/out'))
DEVICE = os.environ.get('DEVICE', 'cuda')
ENV = {**os.environ, 'PYTHONPATH': f"/tmp/site:{os.getcwd()}/src", 'SPEECHPRUNE_CACHE': str(SP / 'cache'),
       'SPEECHPRUNE_ASTERISK_SOUNDS': str(SP / 'asterisk/en'), 'SPEECHPRUNE_ASTERISK_TEXT': str(SP / 'core-sounds-en.txt.gz'),
       'HF_HUB_OFFLINE': '1', 'PYTHONUNBUFFERED': '1', 'TRANSFORMERS_NO_ADVISORY_WARNINGS': '1'}

ENC_FAST = [{'stack': 'encoder', 'kind': 'ffn', 'sparsity': 0.75}, {'stack': 'encoder', 'kind': 'self_attn', 'sparsity': 0.34}]
CANDIDATES = {
    'fast': ENC_FAST + [{'stack': 'decoder', 'remove_layers': [2]}],
    'fastdec': ENC_FAST,
    'medium': [{'stack': 'encoder', 'kind': 'ffn', 'sparsity': 0.5}, {'stack': 'encoder', 'kind': 'self_attn', 'sparsity': 0.34}],
}


def recipe(name, steps, max_utts=None, batch=16):
    """The recipe run there: whisper-tiny.en-export's settings (for 'medium'), with the carried synthetic manifest."""
    return {'name': f'whisper-tiny.en-gpu-{name}', 'model': 'whisper-tiny.en', 'criterion': 'activation', 'reconstruct': True,
            'calibration': {'data': 'asterisk', 'split': 'dev', 'utterances': 32, 'batch_size': 8},
            'targets': CANDIDATES[name],
            'recovery': {'data': ['asterisk:dev', str(SP / 'synth/synth.jsonl')], 'max_utterances': max_utts,
                         'pack_seconds': 28, 'steps': steps, 'batch_size': batch, 'lr': 3e-4, 'encoder_weight': 1.0,
                         'hidden_weight': 1.0, 'train_embeddings': False}}


def digest(sd):
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def setup():
    import soundfile as sf
    import torch
    from safetensors.torch import load, save_file
    meta = json.loads((SP / 'model/digest.json').read_text())
    b = (SP / 'model.part1').read_bytes() + (SP / 'model.part2').read_bytes()
    assert hashlib.sha256(b).hexdigest() == meta['sha_fp16'], 'fp16 model sha mismatch'
    sd = {k: v.float() for k, v in load(b).items()}
    assert digest(sd) == meta['digest'], 'model digest mismatch'
    dst = SP / 'cache/models/whisper-tiny.en'
    dst.mkdir(parents=True, exist_ok=True)
    for f in (SP / 'model').iterdir():
        if f.name != 'digest.json':
            shutil.copy(f, dst / f.name)
    save_file(sd, dst / 'model.safetensors', metadata={'format': 'pt'})
    n = 0
    with tarfile.open(SP / 'asterisk.tar') as tar:
        for m in tar.getmembers():
            x, sr = sf.read(io.BytesIO(tar.extractfile(m).read()), dtype='int16')
            w = SP / 'asterisk/en' / Path(m.name).with_suffix('.wav')
            w.parent.mkdir(parents=True, exist_ok=True)
            sf.write(w, x, sr, subtype='PCM_16')
            n += 1
    print('setup ok:', n, 'prompts;', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no gpu')


def launch(name, rec, out):
    import yaml
    out.mkdir(parents=True, exist_ok=True)
    (out / 'recipe.yaml').write_text(yaml.safe_dump(rec, sort_keys=False))
    code = ("import torch; torch.set_float32_matmul_precision('high'); import sys; "
            "from speechprune.cli import main; sys.argv=['speechprune']+sys.argv[1:]; main()")
    cmd = [sys.executable, '-c', code, 'prune', 'whisper-tiny.en', '--recipe', str(out / 'recipe.yaml'), '--device', DEVICE,
           '--out', str(out / 'prune')]
    return subprocess.Popen(cmd, env=ENV, stdout=open(out / 'log.txt', 'w'), stderr=subprocess.STDOUT)


def run_all(steps, tag, max_utts=None):
    procs = {n: launch(n, recipe(n, s, max_utts), SP / tag / n) for n, s in steps.items()}
    t0 = time.time()
    for n, p in procs.items():
        p.wait()
        print(n, 'rc', p.returncode, f'{time.time() - t0:.0f}s', flush=True)
        if p.returncode:
            print((SP / tag / n / 'log.txt').read_text()[-3000:])
    res = {}
    for n in steps:
        f = SP / tag / n / 'prune/prune.json'
        if f.exists():
            s = json.loads(f.read_text())['steps'][-1]
            res[n] = {'recovery': s.get('recovery'), 'params': s['params'], 'flops_encoder': s['flops_encoder']}
    (SP / tag / 'done.json').write_text(json.dumps(res))
    return res


def probe():
    res = run_all({n: 30 for n in CANDIDATES}, 'probe', max_utts=160)
    sps = {n: r['recovery']['seconds'] / r['recovery']['steps'] for n, r in res.items()}
    (SP / 'probe.json').write_text(json.dumps(sps))
    print('probe s/step:', sps)


def train(tag='train'):
    if os.environ.get('STEPS'):
        steps = {n: int(s) for n, s in (x.split(':') for x in os.environ['STEPS'].split(','))}
    else:  # the probe under-counts a full run's step time (~0.15 vs ~0.10 s: longer label sequences)
        budget = float(os.environ.get('BUDGET', 330))
        steps = {n: max(2, int(min(8000, budget / s) // 10 * 10))
                 for n, s in json.loads((SP / 'probe.json').read_text()).items()}
    print('steps:', steps, flush=True)
    print(json.dumps(run_all(steps, tag), indent=1))


def pack(tag, name):
    import torch
    from safetensors.torch import load_file, save_file
    OUT.mkdir(parents=True, exist_ok=True)
    dense = load_file(SP / 'cache/models/whisper-tiny.en/model.safetensors')
    folder = SP / tag / name / 'prune/step-1'
    sd = load_file(folder / 'model.safetensors')
    keep = {k: v.half().contiguous() for k, v in sd.items() if not (k in dense and torch.equal(dense[k], v))}
    cfg = (folder / 'config.json').read_text()
    cut, acc = [[]], 0
    for k in sorted(keep):
        if acc + keep[k].numel() * 2 > 15.5e6:
            cut.append([])
            acc = 0
        cut[-1].append(k)
        acc += keep[k].numel() * 2
    for i, ks in enumerate(cut):
        save_file({k: keep[k] for k in ks}, OUT / f'{name}-{i}.safetensors',
                  metadata={'config': cfg, 'part': f'{i}/{len(cut)}', 'keys': json.dumps(sorted(sd))})
    shutil.copy(SP / tag / name / 'prune/prune.json', OUT / f'{name}-prune.json')


if __name__ == '__main__':
    {'setup': setup, 'probe': probe, 'train': train, 'pack': pack}[sys.argv[1]](*sys.argv[2:])
