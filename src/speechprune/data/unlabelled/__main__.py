"""``python -m speechprune.data.unlabelled``: decode every installed source into the cache and print what it holds."""

from __future__ import annotations

import collections

from speechprune.data.unlabelled import SOURCES, available_sources, in_window, source_utterances
from speechprune.data.unlabelled.cache import dropped_while_decoding


def main() -> None:
    installed = available_sources()
    print(f"{'source':<10} {'clips':>6} {'minutes':>8} {'speakers':>8}  dropped while decoding / outside 0.5-30 s")
    for name in SOURCES:
        if name not in installed:
            missing = " ".join(dict.fromkeys(pkg for _, pkg in SOURCES[name].missing()))
            print(f"{name:<10} not installed (sudo apt-get install {missing})")
            continue
        utts = source_utterances(name)
        kept = [u for u in utts if in_window(u)]
        reasons = collections.Counter(r.split(" (")[0] for r in dropped_while_decoding(name).values())
        reasons["outside 0.5-30 s"] += len(utts) - len(kept)
        dropped = ", ".join(f"{k}: {v}" for k, v in reasons.items() if v) or "none"
        minutes = sum(u.duration or 0.0 for u in kept) / 60
        print(f"{name:<10} {len(kept):>6} {minutes:>8.1f} {SOURCES[name].speakers:>8}  {dropped}")


if __name__ == "__main__":
    main()
