"""Incremental detokenization and stop-string scanning for streamed generation (O(1) amortized per token).

:class:`IncrementalDetokenizer` (the prefix/read-offset scheme of TGI and vLLM): with generated ids
``t[0..n)`` and offsets ``p <= r``, each new token decodes only the window ``t[p..n)`` and the prefix
window ``t[p..r)``; the text new since the last emission is ``decode(t[p..n))[len(decode(t[p..r))):]``.
It is emitted only when it does not end with U+FFFD (an incomplete multi-byte UTF-8 character whose
remaining bytes are in later tokens); then ``p, r = r, n``.  Since a window is cut only where its text
ended on a complete character, the concatenation of all pieces plus :meth:`flush` equals
``decode(t[0..n))`` for byte-level tokenizers, while each step decodes a few tokens instead of all
``n`` (the whole-output re-decode was O(n^2) per request).

:class:`StopScanner` cuts the text before the earliest stop string.  It keeps only the held-back tail
(at most ``max(len(stop)) - 1`` characters that may begin a stop string), so each piece costs
O(len(piece) + max stop length) regardless of how long the output already is.
"""

from __future__ import annotations


class IncrementalDetokenizer:
    """Feed generated token ids one at a time; get back the text each one completes (see module docstring)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _pending_text(self) -> str:
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        window = self._decode(self.ids[self.prefix_offset:])
        return window[len(prefix):] if len(window) > len(prefix) else ""

    def add(self, token_id: int) -> str:
        """Append one id; the newly completed text ('' while a character is still incomplete)."""
        self.ids.append(int(token_id))
        new = self._pending_text()
        if not new or new.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return new

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the end decodes to U+FFFD)."""
        new = self._pending_text()
        self.prefix_offset = self.read_offset = len(self.ids)
        return new


class StopScanner:
    """Feed text pieces; get back what may be emitted and whether a stop string was reached."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""  # a suffix that may be the start of a stop string
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that is safe to emit now (cut before a stop string; then ``stopped`` is True)."""
        if self.stopped or not piece:
            return ""
        if not self.stops:
            return piece
        buf = self.held + piece
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self.held = ""
            return buf[:min(hits)]
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self.held = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold]

    def flush(self) -> str:
        """At the end of generation the held-back tail was not a stop string after all."""
        out, self.held = ("" if self.stopped else self.held), ""
        return out
