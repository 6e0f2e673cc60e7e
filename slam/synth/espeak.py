"""The espeak-ng TTS backend, through the engine's own C library (libespeak-ng, part of the espeak-ng package).

Why the library and not the `espeak-ng` command: one process start per sentence costs more than the
synthesis itself (bench/synth.py measures both), and `espeak-ng --stdout` gives no word times. The library
in synchronous mode hands back the samples together with its word events (text position + sample index),
so word times come from the engine itself, at no extra cost. espeak reports only where each word begins,
and before a pause that is the start of the pause: spans are trimmed to speech with a 10 ms energy gate.

A voice is `LANGUAGE[+VARIANT][@RATE]`: `en-us`, `en-gb+f3@150` (variant f3 of British English at 150
words per minute; espeak's default rate is 175). Variants are the files of espeak-ng-data/voices/!v (f1-f5,
m1-m8, ...). The engine speaks at 22050 Hz; output is resampled to 16 kHz mono float32 with soxr.

espeak-ng keeps global state, so there is one engine per process: workers are processes, never threads.

Reproducibility: an utterance's audio depends only on its text, voice and settings. The engine does not
start each utterance afresh: its wave generator keeps the glottal cycle's phase, the pitch flutter index and
the echo buffer from the previous utterance, and 1.51 draws noise from libc's rand(). The same sentence
spoken twice in one process came out 55,544 then 55,554 samples long (en-us@170, the test sentence of
tests/test_synth.py), so audio depended on what the worker had spoken before, i.e. on the worker count and
on where a resumed run restarted. None of that state is reachable through the library's API, and
espeak_Terminate + espeak_Initialize hangs on the second utterance. So each utterance is spoken in a child
forked from the process's engine right after espeak_Initialize, which has never spoken: every utterance
starts from the same state, and libc's rand() is reseeded in the child. Cost, measured on 2 cores: a
13-word sentence 7 ms -> 19 ms in one process (fork + exit of a ~40 MB Python process is ~5 ms of it);
`slam synth` of 240 sentences with a load of ~7 on the 2 cores: 4.6 s -> 10.2 s with 1 worker, 3.9 s ->
7.1 s with 2 workers (105x and 150x realtime instead of 230x and 270x).
"""

from __future__ import annotations

import ctypes
import array
import ctypes.util
import os
import re
import struct

import numpy as np
import soxr

from slam.errors import MissingDependencyError, SlamError
from slam.utils import die_with_parent

INSTALL = "install it with: apt-get install -y espeak-ng"

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_RATE = 1


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))

VOICE = re.compile(r"^(?P<lang>[a-z]{2,3}(?:-[A-Za-z0-9]+)*)(?:\+(?P<variant>[A-Za-z0-9_]+))?(?:@(?P<rate>\d+))?$")

# Four speakers for variety: two accents, male and female variants, rates 150-185 words per minute.
DEFAULT_VOICES = ("en-us@170", "en-gb+f3@155", "en-us+m3@185", "en-gb-x-rp+f2@165")


def parse_voice(voice: str) -> tuple[str, str | None, int]:
    m = VOICE.match(voice)
    if not m:
        raise SlamError(f"bad espeak voice {voice!r}: expected LANGUAGE[+VARIANT][@RATE], e.g. en-gb+f3@150")
    rate = int(m["rate"]) if m["rate"] else 175
    if not 80 <= rate <= 450:
        raise SlamError(f"espeak voice {voice!r}: rate {rate} words/min is outside espeak's 80-450")
    return m["lang"], m["variant"], rate


class EspeakBackend:
    """`synthesize(text, voice) -> (16 kHz mono float32 wav, [(word, start_s, end_s), ...])`."""

    name = "espeak"
    sample_rate = 16000
    default_voices = DEFAULT_VOICES

    _lib = None  # one engine per process (see module docstring), so its voice is per process too
    _pid = None
    _engine_voice: str | None = None

    def __init__(self) -> None:
        self._load()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int]] = []
        self._callback = _CALLBACK(self._on_audio)  # kept referenced: the C side holds only a pointer
        self._identifiers = self._list_voices()

    @classmethod
    def _load(cls) -> None:
        if cls._lib is not None and cls._pid == os.getpid():
            return
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise MissingDependencyError(f"espeak-ng (libespeak-ng) is not installed ({e}); {INSTALL}") from e
        # 200 ms buffers: ~10 callbacks for a 2 s sentence instead of ~35 with the default 60 ms
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 200, None, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise MissingDependencyError(f"espeak-ng could not start (its voice data is missing?); {INSTALL}")
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_Voice)
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        cls._lib, cls._pid, cls.engine_rate, cls._engine_voice = lib, os.getpid(), rate, None

    def _list_voices(self) -> dict[str, str]:
        """language code -> voice file identifier, e.g. en-gb -> gmw/en (espeak_ListVoices)."""
        out: dict[str, str] = {}
        voices = self._lib.espeak_ListVoices(None)
        i = 0
        while voices[i]:
            v = voices[i].contents
            # `languages` is a list of (priority byte, NUL-terminated code), ended by a zero priority byte
            j = 0
            while ctypes.string_at(v.languages + j, 1) != b"\0":
                code = ctypes.string_at(v.languages + j + 1).decode()
                out.setdefault(code.lower(), v.identifier.decode())
                j += len(code) + 2
            i += 1
        return out

    def set_voice(self, voice: str) -> None:
        if voice == EspeakBackend._engine_voice:
            return
        lang, variant, rate = parse_voice(voice)
        ident = self._identifiers.get(lang.lower())
        if ident is None:
            raise SlamError(f"espeak-ng has no voice for language {lang!r} (see `espeak-ng --voices`)")
        want = f"{ident}+{variant}" if variant else ident
        if self._lib.espeak_SetVoiceByName(want.encode()) != 0:
            raise SlamError(f"espeak-ng cannot set voice {voice!r} ({want})")
        got = self._lib.espeak_GetCurrentVoice().contents.identifier.decode()
        if got != want:  # espeak silently drops an unknown variant: refuse instead of speaking the wrong voice
            raise SlamError(f"espeak voice {voice!r}: unknown variant {variant!r} (see espeak-ng-data/voices/!v)")
        self._lib.espeak_SetParameter(_RATE, rate, 0)
        EspeakBackend._engine_voice = voice

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(ctypes.string_at(wav, 2 * n))  # int16 samples, as bytes (no numpy in the child)
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_WORD:
                self._events.append((events[i].text_position, events[i].sample))
            i += 1
        return 0

    def _speak_here(self, text: str, voice: str) -> tuple[bytes, list[tuple[int, int]]]:
        """Run the engine in this process: raw 22.05 kHz int16 bytes and (text position, sample) word events."""
        self.set_voice(voice)
        self._lib.espeak_SetSynthCallback(self._callback)  # this instance's, should another one exist
        self._chunks, self._events = [], []
        data = text.encode()
        err = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise SlamError(f"espeak-ng failed on this text (error {err})")
        return b"".join(self._chunks), self._events

    def _speak_in_child(self, text: str, voice: str) -> tuple[bytes, list[tuple[int, int]]]:
        """`_speak_here` in a child forked from this never-speaking engine (see the module docstring).

        Reply on a pipe: status byte (0 ok, 1 SlamError, 2 other error), then for 0 the sample byte count,
        the event count, the events (int32 pairs) and the samples; for 1/2 the message. A child that ends
        without a full reply (killed: out of memory, a signal) raises ChildProcessError, an environment
        error, never a property of the text. A failing os.pipe/os.fork (EMFILE, EAGAIN) raises OSError."""
        parent = os.getpid()
        r, w = os.pipe()
        try:
            pid = os.fork()
        except BaseException:
            os.close(r)
            os.close(w)
            raise
        if pid == 0:  # the child: never returns, never raises, prints nothing
            status = 3
            try:
                os.close(r)
                die_with_parent(parent)
                _libc_srand(1)
                EspeakBackend._engine_voice = None
                try:
                    raw, events = self._speak_here(text, voice)
                    ev = array.array("i", [x for pair in events for x in pair]).tobytes()
                    reply = b"\0" + struct.pack("<QQ", len(raw), len(events)) + ev + raw
                except SlamError as e:
                    reply = b"\1" + str(e).encode()
                except Exception as e:  # noqa: BLE001 - handed to the parent as text
                    reply = b"\2" + f"{type(e).__name__}: {e}".encode()
                view = memoryview(reply)
                while view:
                    view = view[os.write(w, view):]
                status = 0
            finally:
                os._exit(status)
        os.close(w)
        parts = []
        try:
            while chunk := os.read(r, 1 << 20):
                parts.append(chunk)
        finally:
            os.close(r)
            _, code = os.waitpid(pid, 0)
        reply = b"".join(parts)
        if code != 0 or not reply:
            how = f"signal {os.WTERMSIG(code)}" if os.WIFSIGNALED(code) else f"exit code {os.waitstatus_to_exitcode(code)}"
            raise ChildProcessError(f"the espeak-ng child process ended without audio ({how}; out of memory?)")
        if reply[:1] == b"\1":
            raise SlamError(reply[1:].decode(errors="replace"))
        if reply[:1] == b"\2":
            raise RuntimeError(reply[1:].decode(errors="replace"))
        n_raw, n_ev = struct.unpack("<QQ", reply[1:17])
        ev = array.array("i", reply[17:17 + 8 * n_ev])
        raw = reply[17 + 8 * n_ev:]
        if len(raw) != n_raw:
            raise ChildProcessError(f"the espeak-ng child process sent {len(raw)} of {n_raw} audio bytes")
        return raw, list(zip(ev[0::2], ev[1::2]))

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        parse_voice(voice)  # a malformed voice is refused here, without a child
        raw, events = self._speak_in_child(text, voice)
        pcm = np.frombuffer(raw, np.int16)
        audio = soxr.resample(pcm.astype(np.float32) / 32768.0, self.engine_rate, self.sample_rate)
        audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
        starts = [(pos, sample / self.engine_rate) for pos, sample in events]
        return audio, word_times(text, starts, audio, self.sample_rate)


def _libc_srand(seed: int) -> None:
    """espeak-ng 1.51 draws noise from libc's rand() (1.52 has its own generator, seeded per utterance)."""
    ctypes.CDLL(None).srand(ctypes.c_uint(seed))


def word_times(text: str, starts: list[tuple[int, float]], audio: np.ndarray, sr: int) -> list[tuple[str, float, float]]:
    """Word (start, end) seconds from the engine's word starts (1-based character position, seconds).

    Every word of the text gets a span. A word espeak joined to its neighbour without an event of its own
    ("in the" is one event) shares that event's span, split in proportion to letters. A word's span runs
    from its event to the next word's event (the last word: to the end of the audio), trimmed at both ends
    to the 10 ms frames within 30 dB of the utterance's loudest frame: espeak places a word's event before
    the pause that precedes it (~0.2 s early after a full stop), and a word ends before the next pause."""
    words = [(m.start(), re.sub(r"^\W+|\W+$", "", m.group())) for m in re.finditer(r"\S+", text)]
    words = [(pos, w) for pos, w in words if w]
    if not words:
        return []
    total = len(audio) / sr
    # event -> index of the word holding that character (events on punctuation are dropped)
    start_of: dict[int, float] = {}
    for pos, t in starts:
        k = max((i for i, (p, _) in enumerate(words) if p <= pos - 1), default=0)
        start_of.setdefault(k, min(t, total))
    start_of.setdefault(0, 0.0)
    # frame energy for the silence gate
    hop = sr // 100
    n = len(audio) // hop
    energy = (audio[: n * hop].reshape(n, hop) ** 2).mean(axis=1) if n else np.zeros(0)
    voiced = energy > 1e-3 * energy.max() if n else np.zeros(0, bool)

    def voiced_span(a: float, b: float) -> tuple[float, float]:
        """[a, b) without the silence at its ends; speech running on across a or b keeps a or b (the frames
        straddling a and b only tell that; the 10 ms frames wholly inside decide the trim)."""
        i0, i1 = int(np.ceil(a * 100)), min(n, int(b * 100))
        idx = np.flatnonzero(voiced[i0:i1])
        if idx.size == 0:
            return a, b
        start = a if idx[0] == 0 else (i0 + idx[0]) / 100
        end = b if idx[-1] == i1 - i0 - 1 else (i0 + idx[-1] + 1) / 100
        return start, end

    anchors = sorted(start_of)  # word indices that have an engine start
    out: list[tuple[str, float, float]] = []
    for a_i, k in enumerate(anchors):
        k_next = anchors[a_i + 1] if a_i + 1 < len(anchors) else len(words)
        t0 = start_of[k]
        t1 = start_of[k_next] if k_next < len(words) else total
        t0, t1 = voiced_span(t0, max(t0, t1))
        group = words[k:k_next]
        letters = np.cumsum([0] + [len(w) for _, w in group])
        for j, (_, w) in enumerate(group):
            a = t0 + (t1 - t0) * letters[j] / letters[-1]
            b = t0 + (t1 - t0) * letters[j + 1] / letters[-1]
            out.append((w, round(float(a), 3), round(float(b), 3)))
    return out
