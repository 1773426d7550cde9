"""The text side of an image-text backbone: token states and pooled query embeddings.

Moment-DETR, QD-DETR and UniVTG read, per query, the token states of CLIP's text transformer
after its final LayerNorm (`last_hidden_state`, `(L, width)`, L = the query's tokens with start
and end) and use the pooled embedding (`encode_text`) for retrieval.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TextTower:
    """A model with `encode_text(tokens)` whose `final_norm` output is the token states.

    tokenize: queries -> `(N, context_length)` int64 token ids, padded with `pad_token_id`.
    """

    model: nn.Module
    final_norm: nn.Module
    tokenize: Callable[[list[str]], torch.Tensor]
    pad_token_id: int

    @torch.inference_mode()
    def encode(self, queries: list[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per query its `(L, width)` float32 token states, and `(N, D)` float32 pooled
        embeddings (not L2-normalised), from one `encode_text` call."""
        tokens = self.tokenize(queries)
        captured: list[torch.Tensor] = []
        # The token states are read where encode_text computes them, so the two never differ.
        handle = self.final_norm.register_forward_hook(
            lambda module, inputs, output: captured.append(output)
        )
        try:
            pooled = self.model.encode_text(tokens)
        finally:
            handle.remove()
        (states,) = captured  # (N, context_length, width)
        lengths = (tokens != self.pad_token_id).sum(1).tolist()
        token_states = [states[i, :length].float() for i, length in enumerate(lengths)]
        return token_states, pooled.float()
