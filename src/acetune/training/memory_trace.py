"""What autograd saves during a training forward, counted on the meta device (nothing is computed).

`training.memory` turns these counts into a peak estimate. A profile holds, for one model config and
one audio length: the batch's bytes, what the forward saves outside the blocks, what one block saves
when it runs normally, what it saves when it is checkpointed (its input only), and its largest saved
tensor (the gradients in flight during its backward are about 3x that). Parameters are never counted
here (they are weights or trainable state); a storage saved by several ops is counted once.

bf16 autocast is emulated (`MetaAutocast`), since real autocast does not see meta tensors: the ops it
runs in bf16 get bf16 inputs, so autograd saves the casts as it does under autocast; `mse_loss` runs
in fp32. On the medium v1 config this saves the same tensors (shapes, dtypes) as real autocast does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from acetune.training.block_checkpointing import checkpoint_all_but

V1_SSL_HZ = (75, 50)  # MERT and mHuBERT feature rates
V1_LATENT_HZ = 44100 / 512 / 8  # DCAE latent frames per second
V15_LATENT_HZ = 25
TEXT_TOKENS, LYRIC_TOKENS = 20, 200  # the reference benchmark's condition lengths (v1)
V15_CONDITION_TOKENS = 1000  # text + lyrics + timbre tokens of a 1.5 condition, typical


class MetaAutocast(TorchFunctionMode):
    """`torch.autocast("cpu", bfloat16)` for meta tensors: matmul-like ops get bf16 inputs, mse_loss fp32."""

    LOWER = {F.linear, F.conv1d, F.conv2d, torch.matmul, torch.bmm, torch.mm, torch.addmm, torch.Tensor.matmul,
             torch.Tensor.__matmul__, F.scaled_dot_product_attention}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtype = torch.bfloat16 if func in self.LOWER else torch.float32 if func is F.mse_loss else None
        if dtype is not None:
            def cast(t):
                return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
            args, kwargs = tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


@contextlib.contextmanager
def _meta_autocast_query(enabled: bool):
    """v1 attention asks `torch.is_autocast_enabled(device)`, which has no meta device: answer for meta
    tensors what real CPU autocast would (bf16 when emulated, else None)."""
    from acetune.models.v1 import attention

    real = attention.autocast_dtype
    attention.autocast_dtype = lambda x: (torch.bfloat16 if enabled else None) if x.device.type == "meta" else real(x)
    try:
        yield
    finally:
        attention.autocast_dtype = real


def saved_bytes(fn, exclude: set, autocast: bool = True) -> tuple[int, int]:
    """(total, largest) bytes of the distinct storages autograd saves while `fn` runs; `exclude` holds
    storage ids counted elsewhere (parameters)."""
    sizes: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in exclude:
            sizes[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            (MetaAutocast() if autocast else contextlib.nullcontext()), _meta_autocast_query(autocast):
        fn()
    return sum(sizes.values()), max(sizes.values(), default=0)


def nbytes(obj) -> int:
    """Bytes of every tensor in a (nested) dict/list."""
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return obj.numel() * obj.element_size() if isinstance(obj, torch.Tensor) else 0


def _t(*shape, dtype=torch.bfloat16):
    return torch.zeros(*shape, device="meta", dtype=dtype)


def param_ids(model: torch.nn.Module) -> set:
    return {p.untyped_storage()._cdata for p in model.parameters()}


@dataclass
class ActivationProfile:
    """Saved-activation bytes of one config at one length (see the module docstring)."""

    blocks: int
    batch: int  # latents, conditions, SSL targets
    outside: int  # saved outside the blocks (embeddings, heads, loss, shared block inputs)
    block_full: int  # one block run normally
    block_checkpointed: int  # one checkpointed block (its input)
    block_largest: int  # the largest tensor one block saves
    heads: int = 0  # what the SSL projectors save (v1); checkpointed with the blocks, recomputed in the backward
    heads_largest: int = 0
    block_inside: int = 0  # one block's backward transient with its parts checkpointed too (v1; 0: not available)

    def saved(self, checkpointed: int) -> int:
        """Forward-saved bytes with `checkpointed` blocks checkpointed (0: checkpointing off, heads saved too)."""
        return (self.outside + checkpointed * self.block_checkpointed
                + (self.blocks - checkpointed) * self.block_full + (0 if checkpointed else self.heads))

    def transient(self, checkpointed: int, inside: bool = False) -> int:
        """The largest backward transient: one block's recompute (when any is checkpointed; `inside`: with its
        parts checkpointed too) or the SSL heads' recompute, each plus 3x its largest saved tensor for the
        gradients in flight."""
        if not checkpointed:
            return 3 * self.block_largest
        block = self.block_inside if inside else self.block_full + 3 * self.block_largest
        return max(block, self.heads + 3 * self.heads_largest)


def v1_profile(model: torch.nn.Module, seconds: float, ssl: bool = True) -> ActivationProfile:
    """Profile of a v1 transformer built on meta, LoRA (or nothing) added, lyric path cached (freed).

    The forward is traced twice: with every block checkpointed (so `outside` is what remains), and one
    block alone, run normally."""
    from acetune.models.v1.attention import cross_attention_mask, rope_tables
    from acetune.models.v1.family import FAMILY
    from acetune.models.v1.transformer import projected_loss
    from acetune.training.lora import lora_input_casting

    cfg, w = model.config, model.inner_dim
    frames = int(seconds * V1_LATENT_HZ)
    ctx_len = TEXT_TOKENS + LYRIC_TOKENS + 1
    targets = ([[_t(int(seconds * hz), d)] for hz, d in zip(V1_SSL_HZ, cfg.ssl_latent_dims)]
               if ssl and len(model.projectors) else None)
    batch = {"target_latents": _t(1, 8, 16, frames), "attention_mask": _t(1, frames),
             "encoder_text_hidden_states": _t(1, TEXT_TOKENS, cfg.text_embedding_dim),
             "text_attention_mask": _t(1, TEXT_TOKENS), "speaker_embeds": _t(1, cfg.speaker_embedding_dim),
             "lyric_token_idx": _t(1, LYRIC_TOKENS, dtype=torch.long), "lyric_mask": _t(1, LYRIC_TOKENS),
             "lyric_hidden_states": _t(1, LYRIC_TOKENS, w), "ssl_hidden_states": targets}
    params = param_ids(model)
    x = _t(1, frames, w).requires_grad_()
    ctx, temb = _t(1, ctx_len, w), _t(1, 6 * w)
    meta = torch.device("meta")
    rope = rope_tables(frames, cfg.attention_head_dim, cfg.rope_theta, meta)
    rope_c = rope_tables(ctx_len, cfg.attention_head_dim, cfg.rope_theta, meta)
    allowed = cross_attention_mask(torch.ones(1, frames, device=meta), torch.ones(1, ctx_len, device=meta))
    block = model.transformer_blocks[0]
    was = model.gradient_checkpointing
    model.enable_gradient_checkpointing()
    try:
        with lora_input_casting(model, enabled=False):  # as `training.loop.fit` under autocast
            whole, _ = saved_bytes(lambda: FAMILY.training_loss(
                model, batch, noise=torch.zeros_like(batch["target_latents"]), u=torch.zeros(1)), params)
            full, largest = saved_bytes(lambda: block(x, None, ctx, allowed, temb, rope, rope_c), params)
            inside = _inside_transient(block, params, x, ctx, allowed, temb, rope, rope_c)
            heads = heads_largest = 0
            if targets:
                heads, heads_largest = saved_bytes(lambda: [projected_loss(p, x, z) for p, z in
                                                            zip(model.projectors, targets)], params)
    finally:
        if not was:
            model.disable_gradient_checkpointing()
    n, one_input = len(model.transformer_blocks), x.numel() * x.element_size()
    return ActivationProfile(blocks=n, batch=nbytes(batch), outside=whole - n * one_input, block_full=full,
                             block_checkpointed=one_input, block_largest=largest, heads=heads,
                             heads_largest=heads_largest, block_inside=inside)


def _inside_transient(block, params, x, ctx, allowed, temb, rope, rope_c) -> int:
    """One v1 block's backward transient with `checkpoint_inside` (see `LinearTransformerBlock`).

    The block's recompute saves the parts' inputs and everything of the feed-forward's second half, whose
    backward runs first (with 3x its largest tensor in flight); each checkpointed part is then recomputed
    while the other parts' inputs are still saved (the second half's tensors are freed by then)."""
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        block.scale_shift_table[None] + temb.reshape(1, 6, -1)).chunk(6, dim=1)
    block.checkpoint_inside = True
    try:
        outer, outer_largest = saved_bytes(lambda: block(x, None, ctx, allowed, temb, rope, rope_c), params)
    finally:
        block.checkpoint_inside = False
    expanded = _t(*block.ff.expand(x).shape).requires_grad_()
    last, _ = saved_bytes(lambda: x + gate_mlp * block.ff.contract(expanded), params)
    parts = [lambda: block.self_attention_part(x, None, rope, shift_msa, scale_msa, gate_msa),
             lambda: block.cross_attention_part(x, ctx, allowed, rope, rope_c),
             lambda: block.feed_forward_in(x, shift_mlp, scale_mlp)]
    phases = [outer + 3 * outer_largest]
    for part in parts:
        full, largest = saved_bytes(part, params)
        phases.append(outer - last + full + 3 * largest)
    return max(phases)


def v15_step(model: torch.nn.Module, seconds: float, condition_tokens: int = V15_CONDITION_TOKENS):
    """(meta inputs, a loss closure) of one 1.5 training forward: the DiT on 25 Hz latents, MSE."""
    cfg = model.config
    frames = int(seconds * V15_LATENT_HZ)
    acoustic = cfg.audio_acoustic_hidden_dim
    width = cfg.encoder_hidden_size or cfg.hidden_size
    inputs = dict(hidden_states=_t(1, frames, acoustic), timestep=_t(1, dtype=torch.float32),
                  timestep_r=_t(1, dtype=torch.float32), encoder_hidden_states=_t(1, condition_tokens, width),
                  context_latents=_t(1, frames, cfg.in_channels - acoustic))

    def loss():
        out = model(**inputs, return_dict=False)[0]
        return F.mse_loss(out.float(), torch.zeros_like(out, dtype=torch.float32))

    return inputs, loss


def v15_profile(model: torch.nn.Module, seconds: float, condition_tokens: int = V15_CONDITION_TOKENS) -> ActivationProfile:
    """Profile of a diffusers `AceStepTransformer1DModel` built on meta (LoRA added or not): 25 Hz latents,
    the denoising MSE only (1.5 trains no SSL heads)."""
    cfg = model.config
    frames = int(seconds * V15_LATENT_HZ)
    inputs, loss = v15_step(model, seconds, condition_tokens)

    params = param_ids(model)
    was = model.gradient_checkpointing
    model.enable_gradient_checkpointing()
    try:
        whole, _ = saved_bytes(loss, params)
        n = len(model.layers)
        # one block normally (the first), every other block checkpointed
        model.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_all_but({model.layers[0]}))
        one_normal, _ = saved_bytes(loss, params)
        largest = _largest_in(model.layers[0], model, inputs, loss, params)
    finally:
        if not was:
            model.disable_gradient_checkpointing()
    seq = frames // cfg.patch_size
    one_input = seq * cfg.hidden_size * 2  # a checkpointed layer keeps its bf16 input
    return ActivationProfile(blocks=n, batch=nbytes(inputs), outside=whole - n * one_input,
                             block_full=one_normal - whole + one_input, block_checkpointed=one_input,
                             block_largest=largest)


def _largest_in(layer, model, inputs, loss, params) -> int:
    """The largest tensor `layer` saves when it runs normally (the rest checkpointed)."""
    sizes: list[int] = []
    seen: set[int] = set()
    inside = [False]

    def pre(module, args):
        inside[0] = True

    def post(module, args, out):
        inside[0] = False

    def pack(t):
        s = t.untyped_storage()
        if inside[0] and s._cdata not in params and s._cdata not in seen:
            seen.add(s._cdata)
            sizes.append(s.nbytes())
        return t

    handles = [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), MetaAutocast():
            loss()
    finally:
        for h in handles:
            h.remove()
    return max(sizes, default=0)
