"""The node worker: one operator, inputs in seq and event-time order, barriers; no Ray, no I/O."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from runtime.dataplane.alignment import AlignerState, EventTimeAligner, combined_watermark
from runtime.dataplane.messages import (
    ACTIVE,
    IDLE,
    Barrier,
    EndOfStream,
    Envelope,
    PartitionMarks,
    Payload,
    Watermark,
    WatermarkStatus,
)
from runtime.dataplane.partition_release import KeyPartitionedAligner
from runtime.dataplane.stats import NodeStats, observe_event_ages
from streamdag.batch import Batch
from streamdag.operator import NodeConfig, OperatorLogic
from streamdag.operator_registry import lookup
from streamdag.schema import Schema
from streamdag.tag_query import label_origin

__all__ = ["END_OF_TIME", "NodeWorker", "WorkerSnapshot"]

_log = logging.getLogger("streamdag.worker")

END_OF_TIME = int(np.iinfo(np.int64).max)
#: Seconds between two repeats of IDLE that an idle node passes on (see ``_resume``).
IDLE_REPEAT_S = 0.5


@dataclass(frozen=True)
class WorkerSnapshot:
    """A node's state at a checkpoint barrier: the operator's bytes, input watermarks, held events.

    ``aligner`` is what the node held back for event-time order (None for a node that takes
    its input as it arrives): events that came before the barrier but were not yet processed,
    which no upstream replays after a restore.
    """

    checkpoint_id: int
    logic: bytes
    watermarks: tuple[int | None, ...]
    aligner: AlignerState | None = None
    #: A node with dynamic inputs (a tag query): the origin of every input so far...
    origins: tuple[str, ...] = ()
    #: ...and the edges it follows at the cut, with their input.
    edges: tuple[tuple[str, int], ...] = ()


@dataclass
class _EdgeState:
    #: The input slot: the input itself, or for a sharded producer, one of its shards.
    input_index: int
    expected_seq: int = 0
    held: dict[int, tuple[Payload, ...]] = field(default_factory=dict)


class NodeWorker:
    """Runs one node's operator over envelopes from its input edges, in order, exactly once each.

    Per edge, envelopes are processed in ``seq`` order: a duplicate (seq already processed) or a
    message of an older incarnation than the node's own is dropped, one that arrives early is
    held until the gap is filled. Inputs are put in event-time order (see
    ``runtime.dataplane.alignment``): events are held until every input's watermark has passed
    them, then handed to the operator sorted by time, all inputs' events of the same time range
    in one call; only a one-input operator declared without ``needs_time_order`` gets its
    batches as they arrive (from every slot of that input: a key comes from one). An idle
    input (``WatermarkStatus``) holds nothing back until its next record or moving watermark;
    once every live input is idle the node goes by the highest of their watermarks and tells
    its subscribers it is idle too (unless its operator still owes older output,
    ``holds_from``), and active again when an input is. An event
    below what was already handed over is late: dropped and counted, or, for an operator that
    ``handles_late_events``, handed over at once. Barriers are aligned (an input that
    delivered barrier ``n`` is held until every input has), then the node's state is captured
    and the barrier forwarded. ``accept`` returns the payloads to send downstream.

    ``snapshot`` is the operator's bytes alone, or a whole ``WorkerSnapshot`` (held events
    and watermarks too).

    An input fed by a sharded producer (``config.fan_in``) has one slot per producer shard:
    watermarks, end-of-stream and barriers are tracked per slot (the input's watermark is
    their minimum; it ends once all did; a barrier aligns over all), and what the slots of one
    input release together is merged in event-time order (see ``runtime.planning.sharding``);
    a keyed node over a source ``partitioned_by_key`` releases each slot's partitions by their
    own marks (``KeyPartitionedAligner``).
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        snapshot: bytes | WorkerSnapshot | None = None,
        incarnation: int = 0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.incarnation = incarnation
        definition = lookup(config.operator)
        restored, logic_bytes = (
            (snapshot, snapshot.logic) if isinstance(snapshot, WorkerSnapshot) else (None, snapshot)
        )
        self.logic: OperatorLogic = definition.create(config, logic_bytes)
        self.stats = NodeStats(config.node_id, config.name)
        self.snapshots: dict[int, WorkerSnapshot] = {}
        self._clock = clock
        self._edges: dict[str, _EdgeState] = {}
        #: Inputs come and go while it runs (a tag query): see ``follow`` and ``unfollow``.
        self._dynamic = definition.dynamic_inputs
        self._schemas: tuple[Schema, ...] = (
            () if self._dynamic else config.input_schemas or (config.output_schema,))
        #: Per input of a dynamic node: the name of the node it follows.
        self._origins: list[str] = []
        if self._dynamic and restored is not None:  # the inputs it had at the cut
            self._origins = list(restored.origins)
            self._schemas = (config.output_schema,) * len(self._origins)
            self._edges = {edge: _EdgeState(index) for edge, index in restored.edges}
        fan_in = config.fan_in or (1,) * len(self._schemas)
        #: The input each slot feeds (a sharded producer feeds one slot per shard).
        self._input_of = [i for i, count in enumerate(fan_in) for _ in range(count)]
        slot_schemas = [self._schemas[i] for i in self._input_of]
        inputs = len(slot_schemas)
        if restored is not None and len(restored.watermarks) != inputs:
            raise ValueError(
                f"node {config.name!r}: its snapshot has {len(restored.watermarks)} input "
                f"slot(s), this node {inputs}; restore it with the parallelism of the nodes "
                "that fed it when the checkpoint was taken")
        self._keeps_late = definition.handles_late_events
        self._aligner: EventTimeAligner | None = None
        #: A one-input node keeping its keys apart releases a key-partitioned source's
        #: partitions one by one (``PartitionMarks``; ``runtime.dataplane.partition_release``),
        #: over every slot of that input when a sharded producer feeds it.
        self._by_partition: KeyPartitionedAligner | None = None
        if definition.keys_apart and len(self._schemas) == 1 and not self._dynamic:
            self._aligner = self._by_partition = KeyPartitionedAligner(
                slot_schemas[0], restored.aligner if restored is not None else None,
                node=config.name, slots=inputs)
        elif len(self._schemas) > 1 or definition.needs_time_order or self._dynamic:
            self._aligner = EventTimeAligner(
                slot_schemas,
                restored.aligner if restored is not None else None,
                dynamic=self._dynamic, join_grace=int(config.params.get("join_grace", 0)),
            )
        #: What the aligner of an older version's snapshot held for a node that now takes its
        #: one input as it arrives, over several slots too: processed before anything else.
        self._carried: Batch | None = None
        if self._aligner is None and restored is not None and restored.aligner is not None:
            held = [batch for batch in restored.aligner.held if len(batch)]
            self._carried = Batch.concat(held).sorted_by_time() if held else None
        self._watermarks: list[int | None] = (
            list(restored.watermarks) if restored is not None else [None] * inputs
        )
        self._ended = [False] * inputs
        #: Input slots that are idle now, and whether this node told its subscribers it is.
        self._idle: set[int] = set()
        self._output_idle = False
        self._idle_repeated_at = -math.inf
        if self._dynamic:  # inputs let go before the cut stay ended
            followed = {state.input_index for state in self._edges.values()}
            self._ended = [index not in followed for index in range(inputs)]
        self._barrier_of: list[int | None] = [None] * inputs
        #: The checkpoint of the last cut taken here; a barrier at or below it is stale.
        self._last_cut = 0
        self._blocked: list[list[Payload]] = [[] for _ in range(inputs)]
        marks = self._watermarks
        self._emitted_watermark: int | None = (
            None if not marks or any(mark is None for mark in marks)
            else min(mark for mark in marks if mark is not None)
        )
        if self._dynamic and self._aligner is not None:
            self._emitted_watermark = self._aligner.bound
        self.stats.watermark = self._emitted_watermark
        #: The last watermark sent downstream (it may trail the inputs': see holds_from).
        self._forwarded: int | None = None
        self.stats.held_events = self._aligner.buffered if self._aligner is not None else 0
        self.finished = False

    def warm_up(self) -> float:
        """Compile (or load from cache) the operator's kernels on a throwaway copy; seconds taken.

        Runs the operator once over a tiny read-only batch per input, as batches arrive from Ray,
        so that readiness means compiled and no first event pays for it. The copy is discarded.
        """
        started = time.perf_counter()
        if self.config.function is not None or not lookup(self.config.operator).warms_up:
            return 0.0  # never call user code on made-up data: it may have side effects
        schemas = self.config.input_schemas or (self.config.output_schema,)
        batches = [_warm_up_batch(schema) for schema in schemas]
        try:
            scratch = lookup(self.config.operator).create(self.config, None)
            scratch.process(batches)
            scratch.on_watermark(END_OF_TIME - 1)
        except Exception:  # warming is an optimization, never a failure: say so and go on
            _log.warning("node %r (%s): warming its kernels up failed; they compile on the "
                         "first batch instead", self.config.name, self.config.operator,
                         exc_info=True)
        self.stats.warm_up_seconds = time.perf_counter() - started
        return self.stats.warm_up_seconds

    # -- wiring ---------------------------------------------------------------------------
    def connect(self, edge: str, input_index: int) -> None:
        """Expect envelopes on ``edge`` for input slot ``input_index``."""
        if self._dynamic and edge not in self._edges:
            raise TypeError(f"node {self.config.name!r} ({self.config.operator}) has no fixed "
                            f"inputs to connect edge {edge!r} to; it follows nodes (follow)")
        if not 0 <= input_index < len(self._input_of):
            raise ValueError(f"node {self.config.name!r} has input slots 0..."
                             f"{len(self._input_of) - 1}, not {input_index}")
        if edge not in self._edges:
            self._edges[edge] = _EdgeState(input_index)

    def follow(self, edge: str, origin: str) -> int:
        """A dynamic node's new input on ``edge``, from node ``origin``; returns its index.

        It joins without a watermark: it holds the others back until its first one, by its
        node's ``join_grace`` of event time at most (``EventTimeAligner``); its events below
        what was already released are late.
        """
        if not self._dynamic:
            raise TypeError(f"node {self.config.name!r} ({self.config.operator}) has fixed "
                            "inputs; only a node with dynamic inputs (a tag query) follows")
        if edge in self._edges:
            return self._edges[edge].input_index
        assert self._aligner is not None
        index = self._aligner.add_input(self.config.output_schema)
        self._schemas = (*self._schemas, self.config.output_schema)
        self._input_of.append(index)
        self._origins.append(origin)
        self._watermarks.append(None)
        self._ended.append(False)
        self._barrier_of.append(None)
        self._blocked.append([])
        self._edges[edge] = _EdgeState(index)
        return index

    def keep_following(self, edges: Iterable[str]) -> list[Payload]:
        """Let go of every followed edge but ``edges`` (after a restore: what the cut held
        and the deployment no longer follows)."""
        kept = set(edges)
        return [out for edge in list(self._edges) if edge not in kept
                for out in self.unfollow(edge)]

    def unfollow(self, edge: str) -> list[Payload]:
        """A dynamic node lets go of the input on ``edge`` (its producer sends no more).

        The input stops counting at once: for watermarks, event-time order and barriers.
        What it delivered before is released in order with the others'.
        """
        state = self._edges.pop(edge, None)
        if state is None:
            return []
        return self._on_end(state.input_index) + self._status()

    @property
    def origins(self) -> Mapping[str, str]:
        """Of a dynamic node: the origin each followed edge carries."""
        return {edge: self._origins[state.input_index] for edge, state in self._edges.items()}

    @property
    def edges(self) -> Mapping[str, int]:
        """Connected edges and the input each feeds."""
        return {edge: state.input_index for edge, state in self._edges.items()}

    # -- the ordered entry point ----------------------------------------------------------
    def accept(self, envelope: Envelope) -> list[Payload]:
        """Take one envelope; return what it (and any envelopes it unblocked) produced."""
        # Older incarnations are dropped; a newer one is a producer restored after this node
        # was created (a deployment's region recovered while this node joined it later).
        if envelope.incarnation < self.incarnation:
            self.stats.stale_dropped += 1
            return []
        state = self._edges.get(envelope.edge)
        if state is None:
            raise KeyError(
                f"node {self.config.name!r} got a push on unknown edge {envelope.edge!r}; "
                f"connected edges: {sorted(self._edges)}"
            )
        if envelope.seq < state.expected_seq or envelope.seq in state.held:
            self.stats.duplicates_dropped += 1
            return []
        state.held[envelope.seq] = envelope.payloads
        outputs: list[Payload] = []
        while state.expected_seq in state.held:
            payloads = state.held.pop(state.expected_seq)
            state.expected_seq += 1
            for payload in payloads:
                outputs.extend(self._route(state.input_index, payload))
        return outputs

    def feed(self, input_index: int, payload: Payload) -> list[Payload]:
        """Process a payload for an input directly (sources and in-process callers)."""
        return self._route(input_index, payload)

    # -- per-input handling ---------------------------------------------------------------
    def _route(self, input_index: int, payload: Payload) -> list[Payload]:
        if self._carried is not None:
            carried, self._carried = self._carried, None
            return self._process([carried]) + self._route(input_index, payload)
        if self._barrier_of[input_index] is not None:
            self._blocked[input_index].append(payload)
            return []
        return self._handle(input_index, payload)

    def _handle(self, input_index: int, payload: Payload) -> list[Payload]:
        if isinstance(payload, Batch):
            # A batch on an idle input is a resume: say so (ACTIVE) before the events it brings.
            resumed: list[Payload] = []
            if len(payload) and input_index in self._idle:
                self._resume()
                resumed = self._status()
            return resumed + self._on_batch(input_index, payload) + self._status()
        if isinstance(payload, Watermark):
            return self._on_watermark(input_index, payload.timestamp) + self._status()
        if isinstance(payload, WatermarkStatus):
            return self._on_status(input_index, payload.idle) + self._status()
        if isinstance(payload, EndOfStream):
            return self._on_end(input_index) + self._status()
        if isinstance(payload, PartitionMarks):
            return self._on_partition_marks(input_index, payload)
        return self._on_barrier(input_index, payload)

    def _on_batch(self, input_index: int, batch: Batch) -> list[Payload]:
        if not len(batch):
            return []  # a sharded producer's part for this shard held nothing
        self.stats.events_in += len(batch)
        self.stats.batches_in += 1
        self._activate(input_index)
        if self._dynamic:
            batch = label_origin(batch, self._origins[input_index], self.config.output_schema)
        if self._aligner is None:
            return self._process([batch])
        # Holding events never moves the release bound, so nothing is released here.
        late = self._aligner.add(input_index, batch)
        self.stats.held_events = self._aligner.buffered
        if not len(late):
            return []
        self.stats.late_events += len(late)
        if not self._keeps_late:
            self.stats.late_dropped += len(late)
            return []
        inputs = [Batch.empty(schema) for schema in self._schemas]
        inputs = self._inputs({self._input_of[input_index]: late.sorted_by_time()})
        # An operator with a late policy counts what it drops (past its allowed lateness).
        dropped = getattr(self.logic, "late_dropped", 0)
        outputs = self._process(inputs)
        self.stats.late_dropped += getattr(self.logic, "late_dropped", 0) - dropped
        return outputs

    def _process_released(self) -> list[Payload]:
        assert self._aligner is not None
        released = self._aligner.release()
        self.stats.held_events = self._aligner.buffered
        if released is None:
            return []
        observe_event_ages(self.stats.release_age, self.stats.record_release_age,
                           released[0].ts if len(released) == 1
                           else np.concatenate([batch.ts for batch in released]))
        if len(released) == 1:  # one input slot: nothing to merge
            return self._process(released)
        # Step 1: the slots of one input (its producer's shards) merge into that input, in
        # event-time order; a key comes from one shard, so its own order is kept.
        parts: dict[int, list[Batch]] = {}
        for slot, batch in enumerate(released):
            parts.setdefault(self._input_of[slot], []).append(batch)
        return self._process(self._inputs({
            i: batches[0] if len(batches) == 1 else Batch.concat(batches).sorted_by_time()
            for i, batches in parts.items()}))

    def _inputs(self, given: Mapping[int, Batch]) -> list[Batch]:
        """One batch per input: those ``given``, empty ones for the rest."""
        return [given[i] if i in given else Batch.empty(schema)
                for i, schema in enumerate(self._schemas)]

    def _process(self, inputs: list[Batch]) -> list[Payload]:
        started = self._clock()
        output = self.logic.process(inputs)
        self.stats.process_latency.observe(self._clock() - started)
        return self._emit(output)

    def _emit(self, output: Batch | None) -> list[Payload]:
        if output is None or not len(output):
            return []
        self.stats.events_out += len(output)
        self.stats.batches_out += 1
        now = time.time()
        if not self.stats.first_output_at:
            self.stats.first_output_at = now
        self.stats.last_output_at = now
        return [output]

    def _on_watermark(self, input_index: int, timestamp: int) -> list[Payload]:
        current = self._watermarks[input_index]
        if current is not None and timestamp <= current:
            return []  # an idle producer repeating its watermark stays idle
        self._watermarks[input_index] = timestamp
        self._activate(input_index)
        outputs: list[Payload] = []
        if self._aligner is not None and self._aligner.advance(input_index, timestamp):
            outputs = self._process_released()
        return outputs + self._advance_watermark()

    def _on_partition_marks(self, input_index: int, marks: PartitionMarks) -> list[Payload]:
        """A key-partitioned source's partitions moved: release what they passed, if this
        node releases by partition (every other node goes by the watermark alone)."""
        by_partition = self._by_partition
        if by_partition is None or not by_partition.advance_partitions(input_index, marks.marks):
            return []
        return self._process_released()

    def _resume(self) -> None:
        """An idle input resumed: every idle input holds the watermark again.

        Two inputs may come from one source over paths of different speeds (a diamond): when
        the source resumes, the events of the slower path are on their way while the faster
        one already moved its watermark, so an input idle here may not be idle any more.
        Each input is held back again until its producer repeats that it is idle
        (``IDLE_REPEAT_S``), which an idle producer does while it stays idle.
        """
        for index in list(self._idle):
            self._activate(index)

    def _repeat_idle(self) -> list[Payload]:
        """An idle input repeated that it is idle: pass that on, at most every IDLE_REPEAT_S."""
        now = self._clock()
        if not self._output_idle or now - self._idle_repeated_at < IDLE_REPEAT_S:
            return []
        self._idle_repeated_at = now
        return [IDLE]

    def _activate(self, input_index: int) -> None:
        if input_index in self._idle:
            self._idle.discard(input_index)
            if self._aligner is not None:
                self._aligner.set_idle(input_index, False)

    def _on_status(self, input_index: int, idle: bool) -> list[Payload]:
        if self._ended[input_index]:
            return []
        if not idle:
            self._resume()
            return []
        if input_index in self._idle:
            return self._repeat_idle()
        # Step 1: the input stops holding the others back; what they promise is released.
        self._idle.add(input_index)
        outputs: list[Payload] = []
        if self._aligner is not None and self._aligner.set_idle(input_index, True):
            outputs = self._process_released()
        # Step 2: the node's own watermark follows (``combined_watermark``).
        return outputs + self._advance_watermark()

    def _status(self) -> list[Payload]:
        """IDLE once every live input is idle, ACTIVE again when one is not (transitions only)."""
        if not self._idle and not self._output_idle:
            return []
        live = [i for i, ended in enumerate(self._ended) if not ended]
        idle = bool(live) and self._idle.issuperset(live)
        if idle == self._output_idle or self.finished:
            return []
        holds_from = getattr(self.logic, "holds_from", None)
        if idle and holds_from is not None and holds_from() is not None:
            return []  # it owes output older than its watermark: stay active until it is out
        self._output_idle = idle
        self._idle_repeated_at = self._clock()
        return [IDLE if idle else ACTIVE]

    def _advance_watermark(self) -> list[Payload]:
        if self._dynamic:  # the aligner's bound, which joining inputs hold by a grace at most
            assert self._aligner is not None
            if self._aligner.bound is None:
                return []
            watermark = self._aligner.bound
        else:
            combined = combined_watermark(
                [END_OF_TIME if ended else mark
                 for mark, ended in zip(self._watermarks, self._ended, strict=True)],
                self._idle)
            if combined is None:
                return []
            watermark = combined
        if self._emitted_watermark is not None and watermark <= self._emitted_watermark:
            return []
        self._emitted_watermark = watermark
        self.stats.watermark = watermark
        outputs = self._emit(self.logic.on_watermark(watermark))
        # An operator holding events back (a forward as-of join) holds the watermark it sends
        # at the oldest of them, so that what it emits later is not late downstream.
        holds_from = getattr(self.logic, "holds_from", None)
        held = holds_from() if holds_from is not None else None
        forwarded = watermark if held is None else min(watermark, held)
        if forwarded < END_OF_TIME and (self._forwarded is None or forwarded > self._forwarded):
            self._forwarded = forwarded
            outputs.append(Watermark(forwarded))
        return outputs

    def _on_end(self, input_index: int) -> list[Payload]:
        self._ended[input_index] = True
        self._idle.discard(input_index)
        outputs: list[Payload] = []
        if self._aligner is not None and self._aligner.end(input_index):
            outputs = self._process_released()
        if self._dynamic or not all(self._ended):  # it no longer holds the watermark back
            outputs.extend(self._advance_watermark())
        # Inputs blocked at a barrier wait only for the live ones: this one no longer counts.
        waiting = next((cid for cid in self._barrier_of if cid is not None), None)
        if waiting is not None:
            outputs.extend(self._on_barrier(self._barrier_of.index(waiting), Barrier(waiting)))
        if all(self._ended) and not self.finished and not self._dynamic:
            outputs.extend(self._advance_watermark())
            outputs.append(EndOfStream())
            self.finished = True
        return outputs

    def _on_barrier(self, input_index: int, barrier: Barrier) -> list[Payload]:
        checkpoint_id = barrier.checkpoint_id
        aligning = next((cid for cid in self._barrier_of if cid is not None), None)
        # Step 1: a barrier older than the one being aligned (or than the last cut) belongs to
        # a checkpoint the coordinator has given up on: drop it.
        if checkpoint_id <= self._last_cut or (aligning is not None and checkpoint_id < aligning):
            self.stats.barriers_dropped += 1
            return []
        outputs: list[Payload] = []
        if aligning is not None and checkpoint_id > aligning:
            # Step 2: a newer barrier overtakes the alignment in progress (as in Flink): that
            # checkpoint can never complete here, so unblock its inputs and go on with this one.
            outputs = self._abandon_alignment(input_index, checkpoint_id)
        else:
            # Step 2': block this input until every live input has delivered the same barrier.
            self._barrier_of[input_index] = checkpoint_id
        return outputs + self._cut_if_aligned(checkpoint_id)

    def _abandon_alignment(self, input_index: int, checkpoint_id: int) -> list[Payload]:
        self.stats.alignments_abandoned += 1
        held = self._unblock()
        self._barrier_of[input_index] = checkpoint_id
        return self._replay(held)  # may block again, at this barrier, or cut

    def _cut_if_aligned(self, checkpoint_id: int) -> list[Payload]:
        live = [i for i, ended in enumerate(self._ended) if not ended]
        if any(self._barrier_of[i] != checkpoint_id for i in live):
            return []
        # Step 3: all inputs are blocked at the cut: copy the state, with the events held back
        # for event-time order (they came before the cut, so no upstream replays them).
        self.snapshots[checkpoint_id] = WorkerSnapshot(
            checkpoint_id, self.logic.snapshot(), tuple(self._watermarks),
            self._aligner.state() if self._aligner is not None else None,
            tuple(self._origins),
            tuple((edge, state.input_index) for edge, state in self._edges.items())
            if self._dynamic else (),
        )
        self.stats.checkpoints += 1
        self._last_cut = checkpoint_id
        # Step 4: forward the barrier, then unblock and replay what each input held back.
        held = self._unblock()
        return [Barrier(checkpoint_id), *self._replay(held)]

    def _unblock(self) -> list[list[Payload]]:
        """Every input unblocked; what each held back while it was blocked."""
        held, self._blocked = self._blocked, [[] for _ in self._blocked]
        self._barrier_of = [None] * len(self._barrier_of)
        return held

    def _replay(self, held: list[list[Payload]]) -> list[Payload]:
        return [output for i, payloads in enumerate(held) for payload in payloads
                for output in self._route(i, payload)]


#: Distinct keys of a warm-up batch: more than a new key table holds (``KeySlots``' 64), so
#: that the kernels of a growing table load too, as they would on a first batch of many keys.
_WARM_UP_KEYS = 65


def _warm_up_batch(schema: Schema) -> Batch:
    columns = {name: np.ones(_WARM_UP_KEYS, dtype=schema.dtype(name)) for name in schema.names}
    keys = np.array([b"warm%d" % i for i in range(_WARM_UP_KEYS)])
    return Batch(np.arange(1, _WARM_UP_KEYS + 1, dtype=np.int64), keys, columns).read_only()
