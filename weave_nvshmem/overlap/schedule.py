"""Two-stream scheduling for the woven layer: compute on the main stream, collectives on a
high-priority side stream, ordered by events only (no host synchronisation, graph-capturable).

Events, not whole-stream waits: the main stream waits for one collective while the side stream
already runs the next. Tensors that cross streams are marked with ``record_stream`` so the caching
allocator does not hand their memory out while the other stream still reads it.
On CPU tensors (tests, reference runs) every method is a no-op and the code runs in order.
"""
from __future__ import annotations

import contextlib


class TwoStreams:
    def __init__(self, device):
        import torch

        self._torch = torch
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            self.main_stream = torch.cuda.current_stream(device)
            self.side_stream = torch.cuda.Stream(device=device, priority=-1)

    def side(self):
        """Context: work issued inside runs on the side stream."""
        return self._torch.cuda.stream(self.side_stream) if self.cuda else contextlib.nullcontext()

    def side_waits_main(self, *tensors) -> None:
        """The side stream waits for the main stream's work so far; ``tensors`` (made on main) are
        then read on the side stream."""
        if self.cuda:
            self.side_stream.wait_stream(self.main_stream)
            for t in tensors:
                t.record_stream(self.side_stream)

    def record_side(self, *tensors):
        """An event at the side stream's current point; ``tensors`` (made on side) will be read on main."""
        if not self.cuda:
            return None
        for t in tensors:
            t.record_stream(self.main_stream)
        return self.side_stream.record_event()

    def main_waits(self, event) -> None:
        """The main stream waits for ``event`` (None: nothing to wait for)."""
        if self.cuda and event is not None:
            self.main_stream.wait_event(event)
