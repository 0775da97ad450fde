"""Speech synthesis to memory with the espeak-ng library shipped in the espeakng-loader wheel.

No audio device and no download: espeak-ng runs in synchronous mode and hands its samples to a
callback. The library holds global state, initialised once per process, and carries some of it
(pitch flutter, waveform phase) from one utterance to the next: the same call gives other
samples after other calls; and variants with breath noise draw random numbers seeded anew in
each process. speak_fresh() therefore runs each batch in a fresh process with a fixed seed
(``python -m cmkd.data.espeak JOB.json OUT.npz``), which makes a batch reproducible.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

# From espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Engine:
    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        data_path = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with data path {data_path!r}")
        self.lib = lib
        self.sample_rate = rate
        self.version = lib.espeak_Info(None).decode()
        self._chunks: list[np.ndarray] = []
        # Kept on self: ctypes must hold a reference for as long as the library may call it.
        self._callback = _CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n: int, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: go on synthesising

    def say(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) on {text!r} with voice {voice!r}")
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def variants() -> list[str]:
    """Names of the voice variants shipped with the library, e.g. "m3" as in "de+m3"."""
    import espeakng_loader

    return sorted(
        p.name for p in (Path(espeakng_loader.get_data_path()) / "voices" / "!v").iterdir()
    )


def seed(value: int) -> None:
    """Seed espeak-ng's random numbers (breath noise of some variants, e.g. f2 and f3)."""
    _engine().lib.espeak_ng_SetRandSeed(int(value))


@functools.cache
def _engine() -> _Engine:
    return _Engine()


def sample_rate() -> int:
    """The rate of the samples that speak() returns (22,050 Hz for espeak-ng)."""
    return _engine().sample_rate


def version() -> str:
    """The espeak-ng library version, e.g. '1.52.0'."""
    return _engine().version


def speak(
    text: str, voice: str, rate: int = 175, pitch: int = 50, pitch_range: int = 50
) -> np.ndarray:
    """Synthesise text; returns int16 samples (T,) at sample_rate().

    voice: a language with an optional variant, e.g. "en", "en-us+f2", "de+m3".
    rate: words per minute (80..450); pitch and pitch_range: 0..100 (espeak-ng's defaults 50).
    The samples depend on the calls made before in this process (see the module docstring);
    speak_fresh() gives reproducible ones.
    """
    return _engine().say(text, voice, rate, pitch, pitch_range)


class Utterance(NamedTuple):
    """One call of speak(): the arguments, in order."""

    text: str
    voice: str
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50


def speak_fresh(
    batches: Sequence[Sequence[Utterance]], seeds: Sequence[int], workers: int = 1
) -> Iterator[list[np.ndarray]]:
    """Speak each batch in its own fresh process seeded with seeds[i], up to `workers` at once.

    Yields, in order, per batch one int16 array (T,) per utterance at sample_rate(). The same
    batch and seed give the same samples whatever ran before in this process.
    """
    if len(seeds) != len(batches):
        raise ValueError(f"need one seed per batch, got {len(seeds)} for {len(batches)}")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # so the child imports this cmkd
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="cmkd-espeak-") as tmp:
        procs: dict[int, tuple[subprocess.Popen, Path, Path]] = {}

        def start(i: int) -> None:
            job, out, err = (Path(tmp) / f"{i}.{ext}" for ext in ("json", "npz", "err"))
            spec = {"seed": int(seeds[i]), "utterances": [list(u) for u in batches[i]]}
            job.write_text(json.dumps(spec), encoding="utf-8")
            with open(err, "wb") as err_file:
                cmd = [sys.executable, "-m", "cmkd.data.espeak", str(job), str(out)]
                procs[i] = (subprocess.Popen(cmd, stderr=err_file, env=env), out, err)

        started = 0
        try:
            for i in range(len(batches)):
                while started < len(batches) and started < i + max(1, workers):
                    start(started)
                    started += 1
                proc, out, err = procs.pop(i)
                if proc.wait() != 0:
                    log = err.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"espeak-ng batch {i} failed:\n{log}")
                with np.load(out) as data:
                    lengths = data["lengths"]
                    yield np.split(data["samples"], np.cumsum(lengths)[:-1]) if lengths.size else []
        finally:  # on an error or an abandoned iteration: stop the children started here
            for proc, _, _ in procs.values():
                proc.kill()
                proc.wait()


def _main(argv: list[str]) -> None:
    """Child of speak_fresh: JOB.json {seed, utterances: [Utterance fields]} -> OUT.npz."""
    job, out = argv
    spec = json.loads(Path(job).read_text(encoding="utf-8"))
    seed(spec["seed"])
    clips = [speak(*u) for u in spec["utterances"]]
    lengths = np.array([len(c) for c in clips], np.int64)
    samples = np.concatenate(clips) if clips else np.zeros(0, np.int16)
    np.savez(out, samples=samples, lengths=lengths)


if __name__ == "__main__":
    _main(sys.argv[1:])
