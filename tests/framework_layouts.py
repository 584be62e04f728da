"""Batches laid out exactly as verl and AReaL build them, without importing either.

Each builder follows the framework's own code step by step (named in its docstring), so the adapters are
tested on the tensors those frameworks hand a trainer, padding conventions and all. Plain dicts stand in
for TensorDict / DataProto: the adapters read them through the same keys.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F


def word_tokenizer(vocab_size: int):
    """A PreTrainedTokenizerFast over ids 0..vocab_size-1 (token "t<i>"), pad id 0; only `pad` is used."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="t0")


# --- verl -------------------------------------------------------------------------------------------


def verl_data_proto(
    tokenizer,
    prompts: list[list[int]],
    responses: list[list[int]],
    response_masks: list[list[int]],
    *,
    prompt_length: int,
    response_length: int,
    temperature: float,
    param_version_start: list[int],
    param_version_end: list[int],
) -> SimpleNamespace:
    """verl's agent-loop postprocessing, sample by sample, then concatenated into one DataProto-like batch.

    Per sample: `tokenizer.pad` the prompt on the left to `prompt_length`, the response and its mask on the
    right to `response_length`; `response_mask = padded_mask * response_attention_mask`; `input_ids =
    cat(prompt, response)`, `attention_mask = cat(masks)`, `position_ids = clip(cumsum(mask) - 1, 0)`.
    """
    rows = []
    for prompt, response, mask in zip(prompts, responses, response_masks):
        tokenizer.padding_side = "left"
        prompt_output = tokenizer.pad(
            {"input_ids": prompt}, padding="max_length", max_length=prompt_length,
            return_tensors="pt", return_attention_mask=True,
        )  # fmt: skip
        if prompt_output["input_ids"].dim() == 1:
            prompt_output["input_ids"] = prompt_output["input_ids"].unsqueeze(0)
            prompt_output["attention_mask"] = prompt_output["attention_mask"].unsqueeze(0)
        tokenizer.padding_side = "right"
        response_output = tokenizer.pad(
            {"input_ids": response}, padding="max_length", max_length=response_length,
            return_tensors="pt", return_attention_mask=True,
        )  # fmt: skip
        if response_output["input_ids"].dim() == 1:
            response_output["input_ids"] = response_output["input_ids"].unsqueeze(0)
            response_output["attention_mask"] = response_output["attention_mask"].unsqueeze(0)
        mask_output = tokenizer.pad(
            {"input_ids": mask}, padding="max_length", max_length=response_length,
            return_tensors="pt", return_attention_mask=False,
        )  # fmt: skip
        if mask_output["input_ids"].dim() == 1:
            mask_output["input_ids"] = mask_output["input_ids"].unsqueeze(0)
        response_mask = mask_output["input_ids"] * response_output["attention_mask"]
        attention_mask = torch.cat([prompt_output["attention_mask"], response_output["attention_mask"]], dim=1)
        input_ids = torch.cat([prompt_output["input_ids"], response_output["input_ids"]], dim=1)
        position_ids = torch.clip(torch.cumsum(attention_mask, dim=-1) - 1, min=0, max=None)
        rows.append(dict(
            prompts=prompt_output["input_ids"], responses=response_output["input_ids"], response_mask=response_mask,
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        ))  # fmt: skip
    batch = {key: torch.cat([row[key] for row in rows], dim=0) for key in rows[0]}
    non_tensor_batch = {
        "param_version_start": np.array(param_version_start, dtype=object),
        "param_version_end": np.array(param_version_end, dtype=object),
    }
    return SimpleNamespace(batch=batch, non_tensor_batch=non_tensor_batch, meta_info={"temperature": temperature})


@torch.no_grad()
def verl_actor_log_probs(model, batch: dict, temperature: float) -> torch.Tensor:
    """verl's actor `compute_log_prob` on the padded batch: logits / T, log-softmax, the response slice."""
    response_length = batch["responses"].size(-1)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
        use_cache=False,
    ).logits.float()  # fmt: skip
    logits = logits[:, -response_length - 1 : -1, :] / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, batch["responses"].unsqueeze(-1)).squeeze(-1)


# --- AReaL ------------------------------------------------------------------------------------------


def areal_episode(input_tokens, output_tokens, output_logprobs, output_versions, output_loss_mask=None) -> dict:
    """One sample as AReaL's RLVR workflow returns it: [1, len] tensors over prompt + output."""
    input_len, output_len = len(input_tokens), len(output_tokens)
    loss_mask = [1] * output_len if output_loss_mask is None else list(output_loss_mask)
    seq = list(input_tokens) + list(output_tokens)
    return dict(
        input_ids=torch.tensor(seq).unsqueeze(0),
        loss_mask=torch.tensor([0] * input_len + loss_mask).unsqueeze(0),
        logprobs=torch.tensor([0.0] * input_len + list(output_logprobs)).unsqueeze(0),
        versions=torch.tensor([-1] * input_len + list(output_versions)).unsqueeze(0),
        attention_mask=torch.ones(len(seq), dtype=torch.bool).unsqueeze(0),
        rewards=torch.tensor([1.0]),
    )


def areal_concat_padded_tensors(tensor_dicts: list[dict], pad_value: float = 0.0) -> dict:
    """AReaL's `concat_padded_tensors`: right-pad every [n, len] key to the longest with `pad_value`
    (the attention mask with zeros), keep 1-D keys as they are, concatenate along the batch."""
    max_length = max(d["attention_mask"].shape[1] for d in tensor_dicts)
    result = {}
    for key in tensor_dicts[0]:
        parts = []
        for d in tensor_dicts:
            tensor = d[key]
            if tensor.dim() == 1:
                parts.append(tensor)
                continue
            pad_width = max_length - tensor.shape[1]
            if pad_width > 0:
                fill = 0 if key == "attention_mask" else pad_value
                padding = torch.full((tensor.shape[0], pad_width), fill, dtype=tensor.dtype)
                tensor = torch.cat([tensor, padding], dim=1)
            parts.append(tensor)
        result[key] = torch.cat(parts, dim=0)
    return result


def areal_pack_tensor_dict(data: dict) -> dict:
    """AReaL's `pack_tensor_dict`: [batch, seq] keys flattened to their real tokens, `cu_seqlens` in place of
    the attention mask, other keys unchanged."""
    attention_mask = data["attention_mask"]
    batch_size, seq_len = attention_mask.shape
    lens = attention_mask.sum(dim=1, dtype=torch.int32)
    cu_seqlens = F.pad(torch.cumsum(lens, dim=0, dtype=torch.int32), (1, 0), value=0)
    total = int(cu_seqlens[-1])
    packed = {}
    for key, value in data.items():
        if key == "attention_mask":
            packed["cu_seqlens"] = cu_seqlens
            packed["max_seqlen"] = int(lens.max())
            continue
        if torch.is_tensor(value) and value.ndim >= 2 and value.shape[:2] == (batch_size, seq_len):
            out = torch.empty((total, *value.shape[2:]), dtype=value.dtype)
            for i in range(batch_size):
                start, end = int(cu_seqlens[i]), int(cu_seqlens[i + 1])
                out[start:end] = value[i][: end - start]
            packed[key] = out
        else:
            packed[key] = value
    return packed


@torch.no_grad()
def areal_compute_logp(model, token_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """AReaL's `compute_logp` for one unpadded sequence: labels `roll(input_ids, -1)`, logits / T."""
    logits = model(input_ids=token_ids[None], use_cache=False).logits[0].float() / temperature
    labels = torch.roll(token_ids, shifts=-1, dims=-1)
    return torch.log_softmax(logits, dim=-1).gather(-1, labels[:, None]).squeeze(-1)
