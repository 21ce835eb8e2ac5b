"""fastgd.transformers: a patched Hugging Face causal LM gives transformers' own loss and
gradients without its logits, in a plain forward and in a Trainer run; the optimizer helpers
build the Trainer's AdamW groups.

Models are tiny random configs built here (no download). The reference is always the same
model unpatched: its float64 copy is the truth, its float32 (or autocast) copy is "torch in the
same dtype" of the accuracy rule in tests/tolerances.py.
"""
import copy
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

transformers = pytest.importorskip("transformers")

import fastgd  # noqa: E402
import fastgd.transformers as hf  # noqa: E402
from tolerances import (AUTOCAST_TRAINING_CURVE_ATOL, TRAINING_CURVE_ATOL,  # noqa: E402
                        assert_accurate)

VOCAB = 97  # not a multiple of 16: the kernels' narrow-load path, as GPT-2's 50257
SOFTCAP = 2.0  # well inside the logits' range (see _sharpen_head), so the cap changes the loss

_DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)

# architecture -> (config class, config keywords). Every entry of hf.SUPPORTED is here (checked
# below). head_dim is set where the config would otherwise derive 256 (Gemma) or 128 (Qwen3).
ARCHITECTURES = {
    "LlamaForCausalLM": ("LlamaConfig", {}),
    "MistralForCausalLM": ("MistralConfig", {}),
    "Qwen2ForCausalLM": ("Qwen2Config", {}),
    "Qwen3ForCausalLM": ("Qwen3Config", dict(head_dim=8)),
    # Gemma 2/3 soft-cap their logits: fastgd's softcap= must reproduce it
    "Gemma2ForCausalLM": ("Gemma2Config", dict(head_dim=8, final_logit_softcapping=SOFTCAP)),
    "Gemma3ForCausalLM": ("Gemma3TextConfig", dict(head_dim=8, final_logit_softcapping=SOFTCAP)),
    "Phi3ForCausalLM": ("Phi3Config", {}),
    # another module layout (model.transformer, Conv1D blocks), positional order and output
    # class (CausalLMOutputWithCrossAttentions); dropout off so two runs see the same masks
    "GPT2LMHeadModel": ("GPT2Config", dict(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
}


def tiny_model(architecture: str, seed: int = 0):
    config_name, extra = ARCHITECTURES[architecture]
    keywords = extra if config_name == "GPT2Config" else {**_DECODER, **extra}
    config = getattr(transformers, config_name)(**keywords)
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config)
    _sharpen_head(model)
    return model.train()


def _sharpen_head(model) -> None:
    """Initialised at std 0.02, the logits are ~0.1 and every token has loss ~log(V): a soft cap
    or a misplaced target would change the loss by less than rounding. Unit-variance head rows
    make the logits ~N(0, H) (the final norm leaves h at unit RMS), so both matter."""
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0.0, 1.0, generator=torch.Generator()
                                                     .manual_seed(1))


def batch(device, rows: int = 3, length: int = 12, seed: int = 2):
    """Row 0 fully counted; row 1 a prompt masked with -100 (and one -100 alone); row 2 padded
    on the right: attention_mask 0 and labels -100 over the padding."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (rows, length), generator=g)
    attention_mask = torch.ones(rows, length, dtype=torch.long)
    labels = input_ids.clone()
    labels[1, :4] = -100
    labels[1, 7] = -100
    attention_mask[2, 8:] = 0
    input_ids[2, 8:] = 0
    labels[2, 8:] = -100
    return {k: v.to(device) for k, v in
            dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels).items()}


def loss_and_grads(model, inputs, **kwargs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, **kwargs)
    out.loss.backward()
    return out, {n: p.grad for n, p in model.named_parameters()}


def assert_matches_transformers(ours, reference, truth, dtype, what):
    """ours / reference / truth: (loss, grads) of the patched model, the unpatched one in the
    test dtype and the unpatched one in float64."""
    assert_accurate(ours[0], reference[0], truth[0], dtype, f"{what} loss")
    for name, grad in truth[1].items():
        assert_accurate(ours[1][name], reference[1][name], grad, dtype, f"{what} d {name}")


class HeadCalls:
    """Records the shape of every input the LM head is called on."""

    def __init__(self, model):
        self.shapes = []
        self.handle = model.get_output_embeddings().register_forward_hook(
            lambda module, args, out: self.shapes.append(tuple(args[0].shape)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# --------------------------------------------------------------------------- the loss itself
def test_every_supported_architecture_is_tested_here():
    assert set(hf.SUPPORTED) == set(ARCHITECTURES)


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_loss_and_gradients_match_transformers_without_logits(architecture, device):
    unpatched = tiny_model(architecture).to(device)
    truth_model = copy.deepcopy(unpatched).double()
    patched = hf.apply(copy.deepcopy(unpatched))
    inputs = batch(device)

    truth_out, truth_grads = loss_and_grads(truth_model, inputs)
    reference_out, reference_grads = loss_and_grads(unpatched, inputs)
    with HeadCalls(patched) as head:
        out, grads = loss_and_grads(patched, inputs)

    assert out.logits is None
    assert reference_out.logits is not None
    # the head ran once, on no position at all: the B x T x V logits never existed
    assert head.shapes == [(3, 0, 32)]
    assert type(out) is type(reference_out)
    assert_matches_transformers((out.loss, grads), (reference_out.loss, reference_grads),
                                (truth_out.loss, truth_grads), torch.float32, architecture)


@pytest.mark.parametrize("architecture", ["Gemma2ForCausalLM", "Gemma3ForCausalLM"])
def test_the_soft_cap_matters_in_these_tests(architecture, device):
    """Without it the reference loss moves by far more than the tolerance above, so the test
    above would catch a dropped softcap=."""
    model = tiny_model(architecture).to(device).double()
    inputs = batch(device)
    capped = model(**inputs).loss
    model.config.final_logit_softcapping = None
    uncapped = model(**inputs).loss
    assert abs(capped - uncapped) > 0.1 * capped.abs()


def test_positional_arguments_and_return_dict_false(device):
    unpatched = tiny_model("LlamaForCausalLM").to(device)
    patched = hf.apply(copy.deepcopy(unpatched))
    inputs = batch(device)
    expected = patched(**inputs).loss
    # LlamaForCausalLM.forward(input_ids, attention_mask, position_ids, cache, inputs_embeds,
    # labels, ...)
    positional = patched(inputs["input_ids"], inputs["attention_mask"], None, None, None,
                         inputs["labels"], return_dict=False)
    reference = unpatched(**inputs, return_dict=False)
    assert isinstance(positional, tuple)
    torch.testing.assert_close(positional[0], expected, rtol=0, atol=0)
    # ModelOutput.to_tuple() drops None fields: (loss, cache) where transformers gives
    # (loss, logits, cache)
    assert len(positional) == len(reference) - 1
    assert type(positional[1]) is type(reference[2])
    # (config.return_dict = False is not tested: transformers 5.25's own forward then fails --
    # the decoder returns a tuple and LlamaForCausalLM reads .last_hidden_state from it.)


def test_without_labels_or_with_return_logits_the_model_runs_unchanged(device):
    unpatched = tiny_model("Gemma2ForCausalLM").to(device)
    patched = hf.apply(copy.deepcopy(unpatched))
    inputs = batch(device)
    no_labels = {k: v for k, v in inputs.items() if k != "labels"}
    for kwargs in ({}, {"logits_to_keep": 1}):
        with HeadCalls(patched) as head:
            ours = patched(**no_labels, **kwargs)
        reference = unpatched(**no_labels, **kwargs)
        assert head.shapes == [(3, 12 if not kwargs else 1, 32)]
        torch.testing.assert_close(ours.logits, reference.logits, rtol=0, atol=0)
        assert ours.loss is None

    ours = patched(**inputs, return_logits=True)
    reference = unpatched(**inputs)
    torch.testing.assert_close(ours.logits, reference.logits, rtol=0, atol=0)
    torch.testing.assert_close(ours.loss, reference.loss, rtol=0, atol=0)


def test_keep_eval_logits(device):
    patched = hf.apply(tiny_model("Qwen2ForCausalLM").to(device), keep_eval_logits=True)
    inputs = batch(device)
    assert patched(**inputs).logits is None  # training mode
    out = patched.eval()(**inputs)
    assert out.logits is not None and out.logits.shape == (3, 12, VOCAB)
    assert out.loss is not None


@pytest.mark.parametrize("case", ["num_items_in_batch", "num_items_int", "shift_labels",
                                  "logits_to_keep"])
def test_loss_keywords_reach_the_loss_as_in_transformers(case, device):
    """Each keyword transformers' ForCausalLMLoss reads, passed to both models."""
    unpatched = tiny_model("Phi3ForCausalLM").to(device)
    truth_model = copy.deepcopy(unpatched).double()
    patched = hf.apply(copy.deepcopy(unpatched))
    inputs = batch(device)
    counted = int((inputs["labels"][:, 1:] != -100).sum())
    shifted = torch.roll(inputs["labels"], 3, dims=1)  # targets other than the default shift
    kwargs = {
        # the Trainer's count over the whole accumulated batch (here: more than this one holds)
        "num_items_in_batch": dict(num_items_in_batch=torch.tensor(3 * counted, device=device)),
        "num_items_int": dict(num_items_in_batch=2 * counted),
        "shift_labels": dict(shift_labels=shifted),
        # the last 5 positions only; transformers then needs shift_labels of that shape
        "logits_to_keep": dict(logits_to_keep=5, shift_labels=shifted[:, -5:].contiguous()),
    }[case]
    truth = loss_and_grads(truth_model, inputs, **kwargs)
    reference = loss_and_grads(unpatched, inputs, **kwargs)
    ours = loss_and_grads(patched, inputs, **kwargs)
    assert ours[0].logits is None
    assert_matches_transformers((ours[0].loss, ours[1]), (reference[0].loss, reference[1]),
                                (truth[0].loss, truth[1]), torch.float32, case)
    if case.startswith("num_items"):  # and it is not the default mean
        assert abs(ours[0].loss - patched(**inputs).loss) > 0.1 * ours[0].loss


def test_gradient_checkpointing(device):
    """The decoder's layers are recomputed in the backward; the hidden states the loss reads
    are the decoder's output, computed once."""
    unpatched = tiny_model("MistralForCausalLM").to(device)
    truth_model = copy.deepcopy(unpatched).double()
    patched = hf.apply(copy.deepcopy(unpatched))
    for model in (unpatched, truth_model, patched):
        # activation_checkpointing_enable is transformers 5's name; 4.57 has the old one only
        enable = getattr(model, "activation_checkpointing_enable",
                         model.gradient_checkpointing_enable)
        enable({"use_reentrant": False})
    inputs = batch(device)
    truth, reference, ours = (loss_and_grads(m, inputs) for m in (truth_model, unpatched, patched))
    assert ours[0].logits is None
    assert_matches_transformers((ours[0].loss, ours[1]), (reference[0].loss, reference[1]),
                                (truth[0].loss, truth[1]), torch.float32, "checkpointed")


def test_a_batch_with_every_label_ignored_has_loss_zero(device):
    """fastgd's rule for reduction="mean" (README: where it differs); transformers gives NaN."""
    unpatched = tiny_model("LlamaForCausalLM").to(device)
    patched = hf.apply(copy.deepcopy(unpatched))
    inputs = dict(batch(device))
    inputs["labels"] = torch.full_like(inputs["labels"], -100)
    ours, grads = loss_and_grads(patched, inputs)
    assert ours.loss.item() == 0.0
    assert all(not g.any() for g in grads.values() if g is not None)
    assert unpatched(**inputs).loss.isnan()


def test_logits_to_keep_with_labels_of_another_length_is_refused(device):
    patched = hf.apply(tiny_model("LlamaForCausalLM").to(device))
    with pytest.raises(ValueError, match="shift_labels of the kept positions"):
        patched(**batch(device), logits_to_keep=5)


def test_label_smoothing_and_z_loss_options(device):
    """Opt-in extras (transformers' own loss has neither): fastgd's meaning on the shifted
    targets, checked against the unpatched model's float64 logits."""
    unpatched = tiny_model("LlamaForCausalLM").to(device)
    truth_model = copy.deepcopy(unpatched).double()
    patched = hf.apply(copy.deepcopy(unpatched), label_smoothing=0.1, z_loss=1e-3)
    inputs = batch(device)
    logits = truth_model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    target = torch.nn.functional.pad(inputs["labels"], (0, 1), value=-100)[:, 1:].flatten()
    rows = logits.flatten(0, 1)
    counted = target != -100
    z = torch.logsumexp(rows[counted], dim=-1)
    truth = (torch.nn.functional.cross_entropy(rows, target, label_smoothing=0.1)
             + 1e-3 * (z ** 2).mean())
    plain = torch.nn.functional.cross_entropy(rows, target)
    ours = patched(**inputs).loss
    assert abs(truth - plain) > 1e-2  # the options change the loss
    torch.testing.assert_close(ours.double(), truth, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------- autocast
class HeadMatmulDtypes(TorchDispatchMode):
    """The dtypes in which the LM head's weight ``(V, H)`` enters the ops that multiply by it
    (aten's mm/addmm/linear, fastgd's linear_cross_entropy op), seen below autocast: where the
    matmul really runs, whichever code casts."""

    def __init__(self, head_shape):
        super().__init__()
        self.head_shapes = {tuple(head_shape), tuple(reversed(head_shape))}
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if any(word in name for word in ("mm", "linear")):
            self.dtypes |= {a.dtype for a in args if isinstance(a, torch.Tensor)
                            and tuple(a.shape) in self.head_shapes}
        return func(*args, **(kwargs or {}))


def test_autocast_runs_the_head_in_the_autocast_dtype(device):
    unpatched = tiny_model("LlamaForCausalLM").to(device)
    truth_model = copy.deepcopy(unpatched).double()
    patched = hf.apply(copy.deepcopy(unpatched))
    inputs = batch(device)

    truth = loss_and_grads(truth_model, inputs)
    with torch.autocast(device, dtype=torch.bfloat16):
        reference = loss_and_grads(unpatched, inputs)
        ours = loss_and_grads(patched, inputs)
        with HeadMatmulDtypes(patched.lm_head.weight.shape) as head_matmuls:
            patched(**inputs)
    assert head_matmuls.dtypes == {torch.bfloat16}  # as F.linear under autocast
    assert ours[1]["lm_head.weight"].dtype == torch.float32  # the fp32 weight's own gradient
    assert_matches_transformers((ours[0].loss, ours[1]), (reference[0].loss, reference[1]),
                                (truth[0].loss, truth[1]), torch.bfloat16, "autocast")


def spy_on_linear_cross_entropy(monkeypatch) -> list:
    """Records, for every fastgd.linear_cross_entropy call the integration makes, whether
    autocast was on."""
    seen = []
    real = fastgd.linear_cross_entropy

    def spy(hidden, weight, target, **kwargs):
        seen.append(torch.is_autocast_enabled(hidden.device.type))
        return real(hidden, weight, target, **kwargs)

    monkeypatch.setattr(fastgd, "linear_cross_entropy", spy)
    return seen


# --------------------------------------------------------------------------- patching
def test_unsupported_architecture_is_refused_by_name():
    config = transformers.MixtralConfig(**_DECODER, num_local_experts=2, num_experts_per_tok=1)
    model = transformers.MixtralForCausalLM(config)  # adds a router loss to the LM loss
    with pytest.raises(TypeError, match="does not support MixtralForCausalLM") as error:
        hf.apply(model)
    assert all(name in str(error.value) for name in hf.SUPPORTED)
    with pytest.raises(TypeError, match="supported architectures"):
        hf.apply(torch.nn.Linear(3, 3))


def test_head_with_a_bias_or_a_custom_loss_is_refused(device):
    model = tiny_model("LlamaForCausalLM").to(device)
    model.lm_head = torch.nn.Linear(32, VOCAB, bias=True, device=device)
    with pytest.raises(ValueError, match="has a bias"):
        hf.apply(model)

    patched = hf.apply(tiny_model("LlamaForCausalLM").to(device))
    patched.loss_function = lambda logits, labels, vocab_size, **kwargs: logits.sum()
    with pytest.raises(ValueError, match="loss other than transformers' ForCausalLMLoss"):
        patched(**batch(device))


def test_apply_is_idempotent_undo_restores_and_deepcopy_keeps_the_patch(device):
    model = tiny_model("Qwen3ForCausalLM").to(device)
    class_forward = type(model).forward
    inputs = batch(device)
    hf.apply(model)
    forward = model.forward.__func__
    assert hf.apply(model, z_loss=0.5) is model
    assert model.forward.__func__ is forward  # not wrapped twice; only the options changed
    assert model._fastgd_patch.options.z_loss == 0.5
    hf.apply(model)

    twin = copy.deepcopy(model)
    assert hf.is_applied(twin) and twin.forward.__self__ is twin
    out = twin(**inputs)
    out.loss.backward()
    assert out.logits is None
    assert all(p.grad is None for p in model.parameters())  # the copy's own parameters

    hf.undo(model)
    assert not hf.is_applied(model)
    assert "forward" not in vars(model) and type(model).forward is class_forward
    assert model(**inputs).logits is not None
    hf.undo(model)  # a no-op on an unpatched model


def test_signature_is_the_models_own_for_the_trainer():
    import inspect
    model = hf.apply(tiny_model("GPT2LMHeadModel"))
    unpatched = tiny_model("GPT2LMHeadModel")
    assert inspect.signature(model.forward) == inspect.signature(unpatched.forward)


# --------------------------------------------------------------------------- Trainer
def lm_dataset(rows: int = 20, length: int = 8):
    """Sequences following next = (7 * token + 3) mod V, so that five steps of training lower
    the loss (a mistake in the targets would show in the curve), with right padding of varying
    length (labels -100, attention 0) so micro-batches hold different token counts and
    num_items_in_batch differs from the per-batch count."""
    g = torch.Generator().manual_seed(3)
    data = []
    for i in range(rows):
        ids = torch.empty(length, dtype=torch.long)
        ids[0] = int(torch.randint(3, VOCAB, (1,), generator=g))
        for t in range(1, length):
            ids[t] = (7 * ids[t - 1] + 3) % VOCAB
        used = length - 2 * (i % 3)
        mask = (torch.arange(length) < used).long()
        data.append({"input_ids": ids * mask, "attention_mask": mask,
                     "labels": torch.where(mask.bool(), ids, -100)})
    return data


def train(model, bf16: bool, fastgd_adamw: bool, steps: int = 5):
    """Losses and gradient norms of a Trainer run: its own AdamW (torch's), or fastgd's."""
    args = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="fastgd-hf-"), max_steps=steps,
        per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-2,
        weight_decay=0.1, warmup_steps=0, logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=True, bf16=bf16, seed=0, data_seed=0, disable_tqdm=True,
        dataloader_num_workers=0)
    optimizer = hf.optimizer_cls_and_kwargs(args) if fastgd_adamw else None
    trainer = transformers.Trainer(model=model, args=args, train_dataset=lm_dataset(),
                                   optimizer_cls_and_kwargs=optimizer)
    trainer.train()
    return [(h["loss"], h["grad_norm"]) for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_trainer_with_gradient_accumulation_matches_unpatched(bf16, monkeypatch):
    """fastgd's loss and AdamW in the Trainer beside transformers' loss and torch's AdamW."""
    reference = train(tiny_model("LlamaForCausalLM"), bf16, fastgd_adamw=False)
    seen = spy_on_linear_cross_entropy(monkeypatch)
    autocast_dtypes = set()
    model = hf.apply(tiny_model("LlamaForCausalLM"))
    model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda module, args, out: autocast_dtypes.add(out.dtype))
    ours = train(model, bf16, fastgd_adamw=True)

    assert len(ours) == len(reference) == 5
    assert len(seen) == 10  # 5 steps x 2 micro-batches, every one through fastgd
    expected = torch.bfloat16 if bf16 else torch.float32
    assert autocast_dtypes == {expected}  # the decoder ran under the Trainer's autocast
    assert set(seen) == {bf16}  # and so did the loss (its dtypes: the autocast test above)
    atol = (AUTOCAST_TRAINING_CURVE_ATOL[torch.bfloat16] if bf16
            else TRAINING_CURVE_ATOL[torch.float32])
    losses, reference_losses = torch.tensor(ours)[:, 0], torch.tensor(reference)[:, 0]
    torch.testing.assert_close(losses, reference_losses, rtol=0, atol=atol)
    assert reference_losses[-1] < reference_losses[0] - 0.2  # it learnt something
    torch.testing.assert_close(torch.tensor(ours)[:, 1], torch.tensor(reference)[:, 1],
                               rtol=10 * atol, atol=0)


def test_optimizer_helpers_build_the_trainers_groups():
    model = tiny_model("GPT2LMHeadModel")
    model.transformer.h[1].attn.c_attn.weight.requires_grad_(False)  # frozen: in no group
    args = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="fastgd-hf-"), learning_rate=3e-3, weight_decay=0.05,
        adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-7, report_to=[], use_cpu=True)

    def groups(optimizer):
        return [({id(p) for p in g["params"]}, g["weight_decay"], g["lr"], g["betas"], g["eps"])
                for g in optimizer.param_groups]

    torch_trainer = transformers.Trainer(model=model, args=args)  # optim="adamw_torch(_fused)"
    torch_optimizer = torch_trainer.create_optimizer()
    ours_in_trainer = transformers.Trainer(
        model=model, args=args,
        optimizer_cls_and_kwargs=hf.optimizer_cls_and_kwargs(args)).create_optimizer()
    ours = hf.adamw(model, args)
    assert isinstance(torch_optimizer, torch.optim.AdamW)
    assert isinstance(ours, fastgd.AdamW) and isinstance(ours_in_trainer, fastgd.AdamW)
    assert groups(ours) == groups(ours_in_trainer) == groups(torch_optimizer)
    decayed, not_decayed = (g[0] for g in groups(ours))
    assert decayed and not_decayed  # both groups are populated in GPT-2

    plain = hf.adamw(model, lr=1e-3, weight_decay=0.2)
    assert [g["weight_decay"] for g in plain.param_groups] == [0.2, 0.0]
    assert [{id(p) for p in g["params"]} for g in plain.param_groups] == [decayed, not_decayed]


# --------------------------------------------------------------------------- packaging
def test_import_fastgd_does_not_import_transformers():
    code = "import sys, fastgd; assert 'transformers' not in sys.modules, 'imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr


def test_missing_transformers_names_the_extra(monkeypatch):
    for name in list(sys.modules):
        if name == "fastgd.transformers" or name.startswith("fastgd.integrations.hf_"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)  # "import transformers" fails
    with pytest.raises(ImportError, match=r"pip install fastgd\[hf\]"):
        importlib.import_module("fastgd.transformers")
