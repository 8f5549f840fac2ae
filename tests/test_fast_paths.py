"""Every fast path of the training step gives the reference path's numbers."""

from __future__ import annotations

import pytest
import torch

from herd.data.packing import make_batch
from herd.data.tokenize import tokenize_examples
from herd.engine.compiling import compiled_layers, should_compile
from herd.engine.training import MaskedLMLoss, adamw, param_groups
from herd.templates import get_template


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = MaskedLMLoss(model)(batch.input_ids, batch.position_ids, batch.labels)
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _need_compiler():
    if not should_compile("on", steps=1, world=1, gradient_checkpointing=False, device=torch.device("cpu"))[0]:
        pytest.skip("no C++ compiler for inductor")


@pytest.mark.parametrize("budget", [1.0, 0.0])
def test_compiled_layers_give_the_eager_loss_and_gradients(tiny_model, tokenizer, alpaca_examples, budget):
    """Also with every activation recomputed in the backward (budget 0): the same numbers."""
    _need_compiler()
    items, _ = tokenize_examples(alpaca_examples[:12], get_template("alpaca"), tokenizer, max_len=256)
    batch = make_batch(items, 256, tokenizer.pad_token_id)
    ref_loss, ref_grads = _loss_and_grads(tiny_model, batch)
    with compiled_layers(tiny_model.model.layers, True, budget):
        assert all(layer._compiled_call_impl is not None for layer in tiny_model.model.layers)
        loss, grads = _loss_and_grads(tiny_model, batch)
    assert all(layer._compiled_call_impl is None for layer in tiny_model.model.layers)  # eager again
    assert abs(loss - ref_loss) <= 1e-4 * abs(ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-3, atol=1e-5), name


def _saved_bytes(model, batch) -> int:
    """Bytes of the tensors the decoder's forward keeps for its backward (each storage once; the
    parameters and the LM head's loss are not counted)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
    return sum(n for ptr, n in seen.items() if ptr not in params)


def test_a_zero_activation_budget_keeps_only_the_layer_inputs(tiny_model, tokenizer, alpaca_examples):
    """Budget 0 must actually recompute: the decoder's forward keeps a fraction of budget 1's activation
    bytes, little more than one hidden state per layer (the layers' inputs) and the embedding's."""
    _need_compiler()
    items, _ = tokenize_examples(alpaca_examples[:12], get_template("alpaca"), tokenizer, max_len=256)
    batch = make_batch(items, 256, tokenizer.pad_token_id)
    kept = {}
    for budget in (1.0, 0.0):
        with compiled_layers(tiny_model.model.layers, True, budget):
            kept[budget] = _saved_bytes(tiny_model, batch)
    hidden = batch.input_ids.numel() * tiny_model.config.hidden_size * 4  # one fp32 hidden state
    n_layers = tiny_model.config.num_hidden_layers
    assert kept[0.0] < 0.25 * kept[1.0], kept
    assert kept[0.0] <= 2 * (n_layers + 1) * hidden, kept


def test_compile_auto_only_where_it_pays(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("HERD_COMPILE", raising=False)
    monkeypatch.setattr("herd.engine.compiling._have_cxx", lambda: True)
    assert should_compile("auto", steps=30, world=1, gradient_checkpointing=False, device=cpu)[0]
    assert not should_compile("auto", steps=3, world=1, gradient_checkpointing=False, device=cpu)[0]
    assert not should_compile("on", steps=30, world=2, gradient_checkpointing=False, device=cpu)[0]
    assert not should_compile("on", steps=30, world=1, gradient_checkpointing=True, device=cpu)[0]
    assert not should_compile("off", steps=30, world=1, gradient_checkpointing=False, device=cpu)[0]
    monkeypatch.setenv("HERD_COMPILE", "0")
    assert not should_compile("on", steps=30, world=1, gradient_checkpointing=False, device=cpu)[0]
    monkeypatch.setenv("HERD_COMPILE", "1")
    assert should_compile("auto", steps=1, world=1, gradient_checkpointing=False, device=cpu)[0]
    monkeypatch.delenv("HERD_COMPILE")
    monkeypatch.setattr("herd.engine.compiling._have_cxx", lambda: False)
    ok, why = should_compile("on", steps=30, world=1, gradient_checkpointing=False, device=cpu)
    assert not ok and "C++" in why


def test_fused_adamw_steps_like_foreach(tiny_model):
    torch.manual_seed(0)
    params = [p for p in tiny_model.parameters()]
    start = [p.detach().clone() for p in params]
    grads = [torch.randn_like(p) * 1e-2 for p in params]
    results = []
    for fused in (True, False):
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        groups = param_groups(params, 0.1)
        opt = adamw(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8) if fused else torch.optim.AdamW(
            groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=True)
        assert opt.defaults.get("fused") is (True if fused else None)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach().clone() for p in params])
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_chunked_linear_cross_entropy_equals_the_plain_loss_and_gradients():
    from herd.engine.cross_entropy import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (37,))
    ref = torch.nn.functional.cross_entropy(h @ w.t(), y, reduction="sum")
    gh, gw = torch.autograd.grad(ref * 3.0, (h, w))
    loss = linear_cross_entropy(h, w, y, chunk=7)  # 6 chunks, the last one short
    ch, cw = torch.autograd.grad(loss * 3.0, (h, w))
    assert torch.allclose(loss, ref, rtol=1e-12)
    assert torch.allclose(ch, gh, rtol=1e-10) and torch.allclose(cw, gw, rtol=1e-10)
    with torch.no_grad():  # evaluation: the loss only
        assert torch.allclose(linear_cross_entropy(h, w, y, chunk=7), ref, rtol=1e-12)
    frozen = w.detach()  # LoRA: the head is frozen, only the hidden states get a gradient
    (ch2,) = torch.autograd.grad(linear_cross_entropy(h, frozen, y, chunk=7), (h,))
    assert torch.allclose(ch2, torch.autograd.grad(torch.nn.functional.cross_entropy(
        h @ frozen.t(), y, reduction="sum"), (h,))[0], rtol=1e-10)


def test_chunked_linear_logprobs_equal_log_softmax_and_its_gradients():
    """Per-position log-probs (DPO, KL): values and gradients of ``log_softmax(h @ w.T)[i, y_i]`` under
    any per-position upstream gradient (the backward recomputes each chunk's logits)."""
    from herd.engine.cross_entropy import linear_logprobs

    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (37,))
    up = torch.randn(37, dtype=torch.float64)  # e.g. DPO's per-sequence sigmoid weights, spread per position
    ref = torch.log_softmax(h @ w.t(), -1).gather(1, y[:, None]).squeeze(1)
    gh, gw = torch.autograd.grad((ref * up).sum(), (h, w))
    got = linear_logprobs(h, w, y, chunk=7)  # 6 chunks, the last one short
    ch, cw = torch.autograd.grad((got * up).sum(), (h, w))
    assert torch.allclose(got, ref, rtol=1e-12)
    assert torch.allclose(ch, gh, rtol=1e-10) and torch.allclose(cw, gw, rtol=1e-10)
    with torch.no_grad():
        assert torch.allclose(linear_logprobs(h, w, y, chunk=7), ref, rtol=1e-12)
    (ch2,) = torch.autograd.grad((linear_logprobs(h, w.detach(), y, chunk=5) * up).sum(), (h,))  # frozen head
    assert torch.allclose(ch2, gh, rtol=1e-10)


def test_sequence_logps_chunked_equal_full_logits_on_the_model(tiny_model, tokenizer):
    """The model path (tied embedding / LM head, right padding): the chunked head gives the log-probs and
    gradients of full logits through ``log_softmax``, in fp32."""
    from herd.engine.logprobs import encode_reply, pad_right, sequence_logps
    from herd.templates import IGNORE_INDEX

    template = get_template("chatml")
    enc = [encode_reply(template, tokenizer, [{"role": "user", "content": q}], a) for q, a in
           [("Name a colour.", "Blue, like the sky on a clear day."), ("Hi", "Hello! How can I help you today?")]]
    ids, att, lab = pad_right(enc, tokenizer.pad_token_id)
    weights = torch.tensor([0.7, -1.3])
    tiny_model.zero_grad(set_to_none=True)
    got = sequence_logps(tiny_model, ids, att, lab)
    (got * weights).sum().backward()
    g_got = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
    tiny_model.zero_grad(set_to_none=True)
    logp = torch.log_softmax(tiny_model(input_ids=ids, attention_mask=att).logits[:, :-1].float(), -1)
    target = lab[:, 1:]
    tok = logp.gather(2, target.clamp(min=0)[..., None]).squeeze(2) * (target != IGNORE_INDEX)
    want = tok.sum(1)
    (want * weights).sum().backward()
    assert torch.allclose(got, want, rtol=1e-5), (got, want)
    for name, p in tiny_model.named_parameters():
        assert torch.allclose(g_got[name], p.grad, rtol=1e-4, atol=1e-6), name
    tiny_model.zero_grad(set_to_none=True)


def test_masked_lm_loss_chunked_equals_plain_on_the_model(tiny_model, tokenizer, alpaca_examples):
    """The model path: tied embedding / LM head, packed rows, fp32; and under bf16 autocast within
    bf16's rounding."""
    items, _ = tokenize_examples(alpaca_examples[:12], get_template("alpaca"), tokenizer, max_len=256)
    batch = make_batch(items, 256, tokenizer.pad_token_id)
    runs = {}
    for chunked in (False, True):
        tiny_model.zero_grad(set_to_none=True)
        loss = MaskedLMLoss(tiny_model, chunked=chunked)(batch.input_ids, batch.position_ids, batch.labels)
        loss.backward()
        runs[chunked] = (float(loss), {n: p.grad.clone() for n, p in tiny_model.named_parameters()})
    assert abs(runs[True][0] - runs[False][0]) <= 1e-5 * abs(runs[False][0])
    for name, g in runs[False][1].items():
        assert torch.allclose(runs[True][1][name], g, rtol=1e-4, atol=1e-6), name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = float(MaskedLMLoss(tiny_model, chunked=False)(batch.input_ids, batch.position_ids, batch.labels))
        chunked = float(MaskedLMLoss(tiny_model)(batch.input_ids, batch.position_ids, batch.labels))
    assert abs(plain - chunked) <= 1e-2 * abs(plain)


def test_fast_dropout_is_inverted_dropout_with_the_same_p():
    from herd.engine.lora import FastDropout

    torch.manual_seed(0)
    d = FastDropout(0.05)
    x = torch.ones(300_001, requires_grad=True)  # not a multiple of the lanes
    y = d(x)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.05) < 0.003  # ~15,000 drops: 4 sigma is ~0.0016
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - d.p)))
    y.sum().backward()  # the gradient passes where kept, scaled; zero where dropped
    assert torch.equal(x.grad == 0, y.detach() == 0)
    d.eval()
    assert d(x) is x
    torch.manual_seed(1)
    a = FastDropout(0.05)(torch.ones(1000))
    torch.manual_seed(1)
    assert torch.equal(a, FastDropout(0.05)(torch.ones(1000)))  # the seed decides the mask


def test_fast_dropout_compiles_into_one_graph():
    """Compiled (as inside a compiled decoder layer) the mask is the in-graph hash: no graph break, same
    p, reproducible from the seed, a new mask each call, and the backward uses the forward's mask."""
    _need_compiler()
    from herd.engine.lora import FastDropout

    d = FastDropout(0.05)
    f = torch.compile(d, fullgraph=True)  # fullgraph: a graph break raises
    x = torch.ones(300_001, requires_grad=True)
    torch.manual_seed(0)
    y = f(x)
    assert abs(float((y == 0).float().mean()) - 0.05) < 0.003
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - d.p)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d y_i / d x_i is the mask times the scale, and x is all ones
    torch.manual_seed(0)
    assert torch.equal(f(x), y)
    again = f(x)
    assert not torch.equal(again, y) and abs(float((again == 0).float().mean()) - 0.05) < 0.003


def test_hashed_dropout_masks_are_uniform_independent_and_the_same_compiled():
    """The in-graph mask (engine/lora.py's ``hashed_keep``): the drop rate is the threshold's, neighbours
    and masks under keys one bit apart are independent (p^2 both dropped; a plain ``mix(i ^ key)`` would
    make those two masks permutations of each other), and the compiled kernel computes the eager one."""
    from herd.engine.lora import hashed_keep

    shape, half = (1000, 1000), 32768
    key = torch.tensor([0x1234567], dtype=torch.int32)
    for threshold in (3277, 6554, half):
        rate = 1 - float(hashed_keep(shape, key, threshold).float().mean())
        assert abs(rate - threshold / 65536) < 0.0025, threshold  # 1e6 draws: sigma <= 0.0005
    drop = ~hashed_keep(shape, key, half).view(-1)
    assert abs(float((drop[1:] & drop[:-1]).float().mean()) - 0.25) < 0.003  # neighbours
    assert abs(float((drop[1000:] & drop[:-1000]).float().mean()) - 0.25) < 0.003  # one row apart
    other = ~hashed_keep(shape, key ^ 1, half).view(-1)
    assert abs(float((drop & other).float().mean()) - 0.25) < 0.003
    _need_compiler()
    compiled = torch.compile(hashed_keep, fullgraph=True)
    for k in (key, torch.tensor([-(2**31)], dtype=torch.int32), torch.tensor([-1], dtype=torch.int32)):
        assert torch.equal(compiled((777, 513), k, 3277), hashed_keep((777, 513), k, 3277))


def test_a_compiled_lora_layer_with_dropout_is_one_graph(tiny_model, tokenizer, alpaca_examples):
    """peft's adapters with dropout inside compiled decoder layers: no graph break in the training step
    (each one split a layer into pieces with Python between them), and a loss with gradients."""
    _need_compiler()
    from torch._dynamo.utils import counters

    from herd.core.recipe import LoraSpec
    from herd.engine.lora import apply_lora
    from herd.engine.training import causal_lm

    model = apply_lora(tiny_model, LoraSpec(r=4, alpha=8, dropout=0.1))
    model.train()
    items, _ = tokenize_examples(alpaca_examples[:12], get_template("alpaca"), tokenizer, max_len=256)
    batch = make_batch(items, 256, tokenizer.pad_token_id)
    torch._dynamo.reset()
    counters.clear()
    with compiled_layers(causal_lm(model).model.layers, True):
        loss, grads = _loss_and_grads(model, batch)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert loss == loss and any("lora_A" in n for n in grads)


def test_lora_uses_fast_dropout(tiny_model):
    from herd.core.recipe import LoraSpec
    from herd.engine.lora import FastDropout, apply_lora

    model = apply_lora(tiny_model, LoraSpec(r=4, alpha=8, dropout=0.1))
    drops = [m for m in model.modules() if isinstance(m, FastDropout)]
    assert drops and all(abs(d.p - 0.1) < 1e-4 for d in drops)
    assert not any(type(m) is torch.nn.Dropout and m.p > 0 for m in model.modules())


def _adapter_inputs(model, layers=(0, 1)) -> tuple[dict, list]:
    """Hooks recording, for each adapted projection, its input (``(i, name, "in")``) and what its ``lora_A``
    reads, the dropped input (``(i, name, "A")``)."""
    from herd.engine.training import causal_lm

    seen: dict[tuple[int, str, str], torch.Tensor] = {}
    hooks = []
    for i in layers:
        for name, m in causal_lm(model).model.layers[i].named_modules():
            if hasattr(m, "lora_A") and "default" in m.lora_A:
                key = (i, name.rsplit(".", 1)[-1])
                hooks.append(m.register_forward_pre_hook(
                    lambda mod, args, key=key: seen.__setitem__((*key, "in"), args[0].detach().clone())))
                hooks.append(m.lora_A["default"].register_forward_hook(
                    lambda mod, args, out, key=key: seen.__setitem__((*key, "A"), args[0].detach().clone())))
    return seen, hooks


@pytest.mark.parametrize("compiled", [False, True])
def test_projections_reading_one_input_share_one_dropout_mask(tiny_model, tokenizer, alpaca_examples, compiled):
    """q/k/v drop the same elements, and so do gate/up (one mask per input, engine/lora.py); the mask is
    new on every call and in every layer, has the stage's p, and the seed decides it, eager and compiled."""
    if compiled:
        _need_compiler()
    from torch._dynamo.utils import counters

    from herd.core.recipe import LoraSpec
    from herd.engine.lora import FastDropout, apply_lora
    from herd.engine.training import causal_lm

    model = apply_lora(tiny_model, LoraSpec(r=4, alpha=8, dropout=0.25))
    layer = causal_lm(model).model.layers[0]
    q, k, v, o = (getattr(layer.self_attn, n).lora_dropout["default"] for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    gate, up = (getattr(layer.mlp, n).lora_dropout["default"] for n in ("gate_proj", "up_proj"))
    assert q is k is v and gate is up and q is not gate and q.shared and not o.shared
    assert q is not causal_lm(model).model.layers[1].self_attn.q_proj.lora_dropout["default"]
    assert isinstance(o, FastDropout) and not any(n.endswith(".key") for n in model.state_dict())
    model.train()
    items, _ = tokenize_examples(alpaca_examples[:4], get_template("alpaca"), tokenizer, max_len=128)
    batch = make_batch(items, 128, tokenizer.pad_token_id)
    seen, hooks = _adapter_inputs(model)

    def dropped() -> dict:  # (layer, projection): where the adapter's input is zero and the layer's is not
        seen.clear()
        model(input_ids=batch.input_ids, position_ids=batch.position_ids)
        return {(i, n): (a == 0) & (seen[i, n, "in"] != 0) for (i, n, kind), a in seen.items() if kind == "A"}

    torch._dynamo.reset()
    counters.clear()
    with compiled_layers(causal_lm(model).model.layers, compiled):
        torch.manual_seed(0)
        first, second = dropped(), dropped()
        torch.manual_seed(0)
        again = dropped()
    for h in hooks:
        h.remove()
    if compiled:
        assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    for i in (0, 1):
        assert torch.equal(first[i, "q_proj"], first[i, "k_proj"]) and torch.equal(first[i, "q_proj"], first[i, "v_proj"])
        assert torch.equal(first[i, "gate_proj"], first[i, "up_proj"])
        live = seen[i, "q_proj", "in"] != 0  # padding rows are zero before any dropout
        rate = float(first[i, "q_proj"][live].float().mean())
        assert abs(rate - 0.25) < 0.05, rate
        assert not torch.equal(first[i, "q_proj"], second[i, "q_proj"])  # a new mask per call
    assert not torch.equal(first[0, "q_proj"], first[1, "q_proj"])  # and per layer
    assert all(torch.equal(first[key], again[key]) for key in first)  # the seed decides them


def test_shared_dropout_masks_survive_gradient_checkpointing(tiny_model, tokenizer, alpaca_examples):
    """Eager runs with gradient checkpointing recompute each layer in the backward, its parent hooks
    (which redraw the group's key) included: the recompute must draw the forward's masks, so the gradients
    equal those of the same seeded step without checkpointing."""
    import copy

    from herd.core.recipe import LoraSpec
    from herd.engine.lora import apply_lora
    from herd.engine.training import causal_lm

    items, _ = tokenize_examples(alpaca_examples[:4], get_template("alpaca"), tokenizer, max_len=128)
    batch = make_batch(items, 128, tokenizer.pad_token_id)
    grads = []
    for checkpointing in (False, True):
        model = apply_lora(copy.deepcopy(tiny_model), LoraSpec(r=4, alpha=8, dropout=0.25))
        torch.manual_seed(1)
        for p in model.parameters():  # lora_B starts at zero; give it values so lora_A's gradients are not zero
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05)
        if checkpointing:
            causal_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.manual_seed(0)
        loss = model(input_ids=batch.input_ids, position_ids=batch.position_ids, labels=batch.labels).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_A" in n for n in grads[0])
    for n, g in grads[0].items():
        assert torch.allclose(grads[1][n], g, rtol=1e-4, atol=1e-6), n
