"""A small ctypes binding to Debian's ``libespeak-ng.so.1``: waveform plus phone timings.

The synthesiser runs in ``AUDIO_OUTPUT_SYNCHRONOUS`` mode with phoneme events enabled
(``espeakINITIALIZE_PHONEME_EVENTS``): the synth callback receives audio chunks and a list
of events; each ``espeakEVENT_PHONEME`` carries the phoneme mnemonic and ``sample``, the
position of its start in the output stream (at the library's rate, 22050 Hz). A phone runs
from its event to the next one; ``_`` pauses become silence. The library is process-global
state, so each process (e.g. each pool worker) owns one :class:`Espeak`.

Signatures follow ``espeak-ng/speak_lib.h`` (espeak-ng 1.51).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import numpy as np

from speechsq.errors import SpeechsqError

# speak_lib.h constants
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000
EVENT_LIST_TERMINATED, EVENT_PHONEME, EVENT_END, EVENT_MSG_TERMINATED = 0, 7, 5, 6
POS_CHARACTER = 1
CHARS_UTF8 = 1
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE, PARAM_WORDGAP = 1, 2, 3, 4, 7
EE_OK = 0


class EspeakError(SpeechsqError, RuntimeError):
    """libespeak-ng is missing or refused a request."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # samples at the output rate
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class VoiceSpec:
    """An espeak-ng voice (``language+variant``) and prosody settings: one synthetic speaker."""

    voice: str  # e.g. "en-us+f3"
    rate: int = 165  # words per minute
    pitch: int = 50  # 0-100
    pitch_range: int = 50  # 0-100
    word_gap: int = 0  # extra pause between words, units of 10 ms


@dataclass(frozen=True)
class PhoneEvent:
    sample: int  # start, at ``Synthesis.sample_rate``
    phone: str  # espeak mnemonic; "_"-prefixed names are pauses


@dataclass
class Synthesis:
    audio: np.ndarray  # int16
    sample_rate: int
    phones: list[PhoneEvent]


def _load_library() -> ctypes.CDLL:
    candidates = ["libespeak-ng.so.1", ctypes.util.find_library("espeak-ng")]
    for name in filter(None, candidates):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise EspeakError("libespeak-ng not found: install espeak-ng (Debian: apt-get install espeak-ng)")


class Espeak:
    """One synthesiser per process (libespeak-ng keeps global state)."""

    _instance: "Espeak | None" = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
            cls._instance._setup()
        return cls._instance

    def _setup(self) -> None:
        lib = _load_library()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                     INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({rate})")
        self.lib, self.sample_rate = lib, rate
        self._chunks: list[np.ndarray] = []
        self._events: list[PhoneEvent] = []
        self._callback = _CALLBACK(self._on_synth)  # keep a reference: ctypes does not
        lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, num_samples, events) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == EVENT_PHONEME:
                self._events.append(PhoneEvent(int(event.sample), event.id.string.decode("utf-8", "replace")))
            i += 1
        return 0  # continue synthesis

    def synthesize(self, text: str, spec: VoiceSpec) -> Synthesis:
        lib = self.lib
        if lib.espeak_SetVoiceByName(spec.voice.encode()) != EE_OK:
            raise EspeakError(f"unknown espeak-ng voice {spec.voice!r}")
        for param, value in ((PARAM_RATE, spec.rate), (PARAM_PITCH, spec.pitch),
                             (PARAM_RANGE, spec.pitch_range), (PARAM_WORDGAP, spec.word_gap),
                             (PARAM_VOLUME, 100)):
            if lib.espeak_SetParameter(param, int(value), 0) != EE_OK:
                raise EspeakError(f"espeak_SetParameter({param}, {value}) failed")
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        status = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if status != EE_OK:
            raise EspeakError(f"espeak_Synth failed ({status}) for {text!r}")
        lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return Synthesis(audio.astype(np.int16), self.sample_rate, sorted(self._events, key=lambda e: e.sample))
