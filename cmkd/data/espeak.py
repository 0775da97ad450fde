"""Speech synthesis to memory with the espeak-ng library shipped in the espeakng-loader wheel.

No audio device and no download: espeak-ng runs in synchronous mode and hands its samples to a
callback. The library holds global state, so it is initialised once per process.
"""

from __future__ import annotations

import ctypes
import functools

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
    Deterministic: the same arguments give the same samples.
    """
    return _engine().say(text, voice, rate, pitch, pitch_range)
