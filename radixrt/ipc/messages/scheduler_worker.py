"""Hop scheduler ⇄ worker(s): one ForwardBatch per step out, one StepResult back."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from radixrt.sampling_params import SamplingParams

# An input id the scheduler does not know yet (overlap scheduling): the token the worker
# sampled last for the row's slot, resolved on the worker's device.
PENDING_TOKEN = -1


class SchedulerWorkerMsg:
    """Base of every message on the scheduler ⇄ worker hop."""


@dataclass
class NewSlot:
    """Registers a request in a worker slot: its sampling state lives there from now on."""

    slot: int
    sampling: SamplingParams
    prompt_ids: np.ndarray | None = None  # only when repetition_penalty needs it
    eos_ids: tuple[int, ...] = ()  # masked until min_new_tokens is reached
    output_ids: np.ndarray | None = None  # tokens generated before a retraction (penalties)


@dataclass
class ForwardBatch(SchedulerWorkerMsg):
    """One model step. Requests are listed in batch order; prefill chunks and decodes mix.

    For request i: tokens input_ids[cu[i]:cu[i+1]] sit at positions start_pos[i] ... and the
    KV of positions < start_pos[i] is already in the pool at the slot's pages.
    """

    step: int
    slots: np.ndarray  # int32 [B]
    start_pos: np.ndarray  # int32 [B]
    num_new: np.ndarray  # int32 [B]
    input_ids: np.ndarray  # int32 [sum num_new]; PENDING_TOKEN: the slot's last sampled one
    sample: np.ndarray  # bool [B]: sample a token (False for a non-final prefill chunk)
    # Page-table updates: slot row [offset: offset+len(pages)] = pages.
    page_slots: np.ndarray  # int32 [U]
    page_offsets: np.ndarray  # int32 [U]
    page_lens: np.ndarray  # int32 [U]
    page_ids: np.ndarray  # int32 [sum page_lens]
    new_slots: list[NewSlot] = field(default_factory=list)
    freed_slots: list[int] = field(default_factory=list)
    # Grammar constraints of this step: batch rows mask_rows[j] (which sample) may only take
    # the tokens whose bits are set in mask_bits[j] (packed int32, bit t % 32 of word t // 32).
    mask_rows: np.ndarray | None = None  # int32 [K]
    mask_bits: np.ndarray | None = None  # int32 [K, ceil(V / 32)]
    # Prompt logprobs: the logits of flat token rows prompt_lp_rows[j] give the logprob of
    # token prompt_lp_targets[j] (the next prompt token) and the prompt_lp_top most likely
    # tokens there. Request i's rows come prompt_lp_num[i] at a time, in batch order.
    prompt_lp_rows: np.ndarray | None = None  # int32 [P]
    prompt_lp_targets: np.ndarray | None = None  # int32 [P]
    prompt_lp_num: np.ndarray | None = None  # int32 [B]
    prompt_lp_top: int = 0
    # Embeddings: the final hidden state (normalized) of flat token row embed_rows[j], the
    # last prompt token of batch row embed_of[j].
    embed_rows: np.ndarray | None = None  # int32 [E]
    embed_of: np.ndarray | None = None  # int32 [E]

    @property
    def batch_size(self) -> int:
        return len(self.slots)

    @property
    def is_decode_only(self) -> bool:
        return bool(len(self.num_new)) and int(self.num_new.max()) == 1 and not self.new_slots


@dataclass
class StepResult(SchedulerWorkerMsg):
    """The sampled tokens of one ForwardBatch (from rank 0)."""

    step: int
    next_ids: np.ndarray  # int32 [B]; -1 where not sampled
    logprobs: np.ndarray | None = None  # float32 [B]
    top_ids: np.ndarray | None = None  # int32 [B, K]
    top_logprobs: np.ndarray | None = None  # float32 [B, K]
    # Of the batch's prompt_lp_rows, in their order (None when it had none).
    prompt_logprobs: np.ndarray | None = None  # float32 [P]
    prompt_top_ids: np.ndarray | None = None  # int32 [P, prompt_lp_top]
    prompt_top_logprobs: np.ndarray | None = None  # float32 [P, prompt_lp_top]
    embeddings: np.ndarray | None = None  # float32 [E, hidden], of the batch's embed_rows
    forward_seconds: float = 0.0  # worker time of the step (apply, forward, sample, copy)
    # Worker idle before this step (its previous step was done and this batch not there yet):
    # the host time overlap scheduling failed to hide.
    idle_seconds: float = 0.0
