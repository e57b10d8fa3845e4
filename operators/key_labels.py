"""Key slots that remember each slot's key bytes, so rows held by slot (windows, bars) are
labelled with their keys by one numpy take, not a Python loop."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from operators.key_slots import KeySlots

__all__ = ["KeyLabels"]


class KeyLabels:
    """Key slots plus the key bytes of every slot, to label emitted rows without a loop."""

    def __init__(self, snapshot: bytes | None = None) -> None:
        self.slots_table = KeySlots() if snapshot is None else KeySlots.restore(snapshot)
        self.by_slot = self.slots_table.keys() if len(self.slots_table) else np.empty(0, "S1")

    def slots(self, keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.int64]:
        """The slot of every key, remembering the bytes of new ones."""
        slots = self.slots_table.slots(keys)
        known, total = len(self.by_slot), len(self.slots_table)
        if total > known:
            width = max(self.by_slot.dtype.itemsize, keys.dtype.itemsize)
            grown = np.zeros(total, dtype=f"S{width}")
            grown[:known] = self.by_slot
            new = slots >= known
            grown[slots[new]] = keys[new]
            self.by_slot = grown
        return slots

    @property
    def count(self) -> int:
        """Keys seen so far."""
        return len(self.slots_table)

    def snapshot(self) -> npt.NDArray[np.uint8]:
        """The key table as bytes in an array, for ``save_arrays``."""
        return np.frombuffer(self.slots_table.snapshot(), dtype=np.uint8)
