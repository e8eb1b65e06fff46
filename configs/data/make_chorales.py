"""Builds ``chorales.npz``: piano rolls of the Bach chorales in music21's corpus, one frame per
quarter note, 88 keys (MIDI 21–108). Needs music21, which elbox does not (run it once, in an
environment of its own; the built file is committed):

    python3 -m venv /tmp/music && /tmp/music/bin/pip install music21 numpy
    /tmp/music/bin/python configs/data/make_chorales.py

The file holds ``x`` ``[N, T, 88]`` (uint8, 0/1, padded with zeros) and ``lengths`` ``[N]``, the
chorales in the order of music21's Riemenschneider iterator; ``chorales.json`` beside it records
the provenance (music21's version, each chorale's BWV source, the rule). A frame t is the set of
pitches sounding at beat t (a note covers the frames t with onset ≤ t < onset + duration, in
quarter notes); all parts are merged. The train/validation/test split is the run layer's, fixed
by its seed (configs/dmm_chorales.toml). This is not the 382-chorale JSB split of the literature
(Boulanger-Lewandowski et al. 2012): other scores, another split.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LOWEST, KEYS = 21, 88


def roll(score) -> np.ndarray:
    """The piano roll of one score, ``[T, 88]`` booleans, one frame per quarter note."""
    notes = list(score.flatten().notes)
    end = max(float(n.offset) + float(n.quarterLength) for n in notes)
    frames = np.zeros((int(math.ceil(end)), KEYS), dtype=np.uint8)
    for n in notes:
        start, stop = float(n.offset), float(n.offset) + float(n.quarterLength)
        first, last = int(math.ceil(start)), int(math.ceil(stop))  # frames t with start <= t < stop
        for p in n.pitches:
            key = p.midi - LOWEST
            if 0 <= key < KEYS and first < last:
                frames[first:last, key] = 1
    return frames[: int(np.nonzero(frames.any(1))[0].max()) + 1]


def main() -> None:
    import music21
    from music21 import corpus

    rolls, sources = [], []
    for score in corpus.chorales.Iterator(numberingSystem="riemenschneider", returnType="stream"):
        r = roll(score)
        if len(r) < 8:  # a fragment
            continue
        rolls.append(r)
        sources.append(str(score.metadata.title if score.metadata is not None else ""))
    T = max(len(r) for r in rolls)
    x = np.zeros((len(rolls), T, KEYS), dtype=np.uint8)
    for i, r in enumerate(rolls):
        x[i, : len(r)] = r
    lengths = np.array([len(r) for r in rolls], dtype=np.int64)
    np.savez_compressed(HERE / "chorales.npz", x=x, lengths=lengths)
    provenance = {
        "source": "music21 corpus, corpus.chorales.Iterator(numberingSystem='riemenschneider')",
        "music21": music21.__version__,
        "rule": "one frame per quarter note; frame t holds the pitches of every note with onset <= t < onset + "
                "duration (quarter notes), all parts merged; 88 keys from MIDI 21; fragments under 8 frames dropped",
        "chorales": len(rolls), "max_length": int(T), "mean_length": float(lengths.mean()),
        "frames": int(lengths.sum()), "titles": sources,
        "note": "not the 382-chorale JSB split of Boulanger-Lewandowski et al. (2012)",
    }  # fmt: skip
    (HERE / "chorales.json").write_text(json.dumps(provenance, indent=1) + "\n")
    print(f"{len(rolls)} chorales, {lengths.sum()} frames, lengths {lengths.min()}..{lengths.max()}")


if __name__ == "__main__":
    main()
