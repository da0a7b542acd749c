"""The ``hf`` rollout backend (recipe/cpu/hf_*.py): sampling, log-probs, stop rules, weight sync, aborts,
and the Ray replica + trainer-side adapter that verl's ``main_ppo`` uses with ``rollout.name=hf``."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch
from transformers import AutoModelForCausalLM
from verl.workers.config import HFModelConfig, RolloutConfig

from collabllm_verl.recipe.cpu.hf_server import HFRolloutServer
from collabllm_verl.recipe.cpu.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two tiny models with the same tokenizer and architecture but different weights (seed 0 and 1)."""
    root = tmp_path_factory.mktemp("hf_rollout")
    return str(build_tiny_model(root / "seed0", seed=0)), str(build_tiny_model(root / "seed1", seed=1))


def _rollout_config(**overrides) -> RolloutConfig:
    values = {
        "name": "hf",
        "tensor_model_parallel_size": 1,
        "prompt_length": 64,
        "response_length": 24,
        "load_format": "auto",
        "dtype": "float32",
        "engine_kwargs": {"hf": {"num_threads": 1, "batch_wait_ms": 20}},
    }
    values.update(overrides)
    return RolloutConfig(**values)


def _server(model_dir: str, **overrides) -> HFRolloutServer:
    return HFRolloutServer(_rollout_config(**overrides), HFModelConfig(path=model_dir))


def _prompt(model_dir: str, text: str) -> list[int]:
    tokenizer = HFModelConfig(path=model_dir).tokenizer
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded)


def _reference_log_probs(
    model, prompt: list[int], response: list[int], temperature: float = 1.0
) -> torch.Tensor:
    """Log-probs of ``response`` from one unpadded forward pass of a plain transformers model."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


def _load_reference(model_dir: str):
    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()


def _reference_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The greedy continuation of ``prompt`` by a plain transformers model, EOS ignored (``ignore_eos``)."""
    return model.generate(
        torch.tensor([prompt]),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        top_k=None,
        top_p=None,
        temperature=None,
        eos_token_id=None,
        pad_token_id=0,
    )[0, len(prompt) :].tolist()


async def test_batched_sampling_log_probs_match_a_forward_pass(model_dirs):
    server = _server(model_dirs[0])
    base = _prompt(model_dirs[0], "Find the sum of all x with x^2 = 4.")
    prompts = [base[: len(base) - k] for k in range(4)]  # different lengths: exercises left padding
    params = {"temperature": 0.7, "top_p": 1.0, "top_k": -1, "logprobs": True, "max_tokens": 16}
    outputs = await asyncio.gather(
        *[
            server.generate(prompt_ids=p, sampling_params=dict(params), request_id=f"r{i}")
            for i, p in enumerate(prompts)
        ]
    )
    assert server.get_stats()["batches"] == 1  # the four concurrent requests were sampled together

    reference = _load_reference(model_dirs[0])
    eos = set(server.eos_token_ids)
    for prompt, out in zip(prompts, outputs, strict=True):
        assert 1 <= len(out.token_ids) <= 16
        assert len(out.log_probs) == len(out.token_ids)
        if out.stop_reason == "completed":
            assert out.token_ids[-1] in eos
        else:
            assert out.stop_reason == "length" and len(out.token_ids) == 16
        expected = _reference_log_probs(reference, prompt, out.token_ids, temperature=0.7)
        assert torch.allclose(torch.tensor(out.log_probs), expected, atol=1e-4), (out.log_probs, expected)
        assert out.extra_fields["global_steps"] is None


async def test_top_k_limits_samples_and_processed_log_probs_renormalise(model_dirs):
    server = _server(model_dirs[0])
    prompt = _prompt(model_dirs[0], "Solve 3x + 1 = 10.")
    out = await server.generate(
        prompt_ids=prompt, sampling_params={"temperature": 1.0, "top_k": 3, "max_tokens": 12}, request_id="k"
    )
    reference = _load_reference(model_dirs[0])
    ids = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        logits = reference(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    top3 = logits.topk(3, dim=-1)
    for step, token in enumerate(out.token_ids):
        assert token in top3.indices[step].tolist(), f"step {step}: token {token} outside the top-3"
        renormalised = torch.log_softmax(top3.values[step], -1)[top3.indices[step].tolist().index(token)]
        assert math.isclose(out.log_probs[step], renormalised.item(), abs_tol=1e-4)


async def test_eos_logit_bias_ends_turns_and_shapes_processed_log_probs(model_dirs):
    bias = 5.0
    server = _server(model_dirs[0], engine_kwargs={"hf": {"num_threads": 1, "eos_logit_bias": bias}})
    prompt = _prompt(model_dirs[0], "Which is larger, 2^10 or 10^3?")
    params = {"temperature": 1.0, "max_tokens": 200}
    outputs = await asyncio.gather(
        *[
            server.generate(prompt_ids=prompt, sampling_params=dict(params), request_id=f"e{i}")
            for i in range(4)
        ]
    )
    reference = _load_reference(model_dirs[0])
    eos = server.eos_token_ids
    for out in outputs:  # p(eos) ~ e^5 / (e^5 + vocab) ~ 0.2 per token: every response ends early
        assert out.stop_reason == "completed" and out.token_ids[-1] in eos and len(out.token_ids) < 200
        ids = torch.tensor([prompt + out.token_ids])
        with torch.no_grad():
            logits = reference(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        logits[:, list(eos)] += bias
        expected = (
            torch.log_softmax(logits, -1).gather(-1, torch.tensor(out.token_ids).unsqueeze(-1)).squeeze(-1)
        )
        assert torch.allclose(torch.tensor(out.log_probs), expected, atol=1e-4)


async def test_a_request_logit_bias_replaces_the_servers(model_dirs):
    """A request's own ``logit_bias`` (vLLM's sampling parameter) is used instead of ``engine_kwargs.hf``'s,
    ``{}`` included; requests without one keep the server's. Greedy decoding makes each case exact."""
    server = _server(model_dirs[0], engine_kwargs={"hf": {"logit_bias": {"7": 100.0}}})
    prompt = _prompt(model_dirs[0], "Name a prime number.")
    greedy = {"temperature": 0, "ignore_eos": True, "max_tokens": 6}
    biased, own, none, plain = await asyncio.gather(
        server.generate(prompt_ids=prompt, sampling_params=dict(greedy), request_id="b1"),
        server.generate(prompt_ids=prompt, sampling_params={**greedy, "logit_bias": {"9": 100.0}}, request_id="b2"),
        server.generate(prompt_ids=prompt, sampling_params={**greedy, "logit_bias": {}}, request_id="b3"),
        _server(model_dirs[0]).generate(prompt_ids=prompt, sampling_params=dict(greedy), request_id="b4"),
    )
    assert biased.token_ids == [7] * 6 and own.token_ids == [9] * 6
    assert none.token_ids == plain.token_ids and set(plain.token_ids) != {7}
    with pytest.raises(ValueError, match="logit_bias"):
        await server.generate(prompt_ids=prompt, sampling_params={**greedy, "logit_bias": {"10**9": 1}},
                              request_id="b5")  # fmt: skip
    with pytest.raises(ValueError, match="vocabulary size"):
        await server.generate(prompt_ids=prompt, sampling_params={**greedy, "logit_bias": {10**9: 1}},
                              request_id="b6")  # fmt: skip


async def test_greedy_is_deterministic_and_stop_tokens_end_the_response(model_dirs):
    server = _server(model_dirs[0])
    prompt = _prompt(model_dirs[0], "What is 7 times 8?")
    greedy = {"temperature": 0, "top_p": 1.0, "top_k": -1, "ignore_eos": True, "max_tokens": 20}
    first = await server.generate(prompt_ids=prompt, sampling_params=dict(greedy), request_id="g1")
    second = await server.generate(prompt_ids=prompt, sampling_params=dict(greedy), request_id="g2")
    assert first.token_ids == second.token_ids
    assert len(first.token_ids) == 20 and first.stop_reason == "length"

    stop = first.token_ids[5]
    cut = first.token_ids.index(stop) + 1
    stopped = await server.generate(
        prompt_ids=prompt, sampling_params={**greedy, "stop_token_ids": [stop]}, request_id="g3"
    )
    assert stopped.token_ids == first.token_ids[:cut]
    assert stopped.stop_reason == "completed"

    # Without max_tokens the budget is min(response_length, prompt_length + response_length - prompt_len).
    default = await server.generate(
        prompt_ids=prompt, sampling_params={"temperature": 0, "ignore_eos": True}, request_id="g4"
    )
    assert len(default.token_ids) == min(24, 64 + 24 - len(prompt))


async def test_weight_update_changes_outputs_to_the_new_model(model_dirs):
    server = _server(model_dirs[0])
    prompt = _prompt(model_dirs[0], "Compute 12 divided by 4.")
    greedy = {"temperature": 0, "ignore_eos": True, "max_tokens": 20}
    before = await server.generate(prompt_ids=prompt, sampling_params=dict(greedy), request_id="b")

    trained = _load_reference(model_dirs[1])
    loaded = await server.load_weights(list(trained.state_dict().items()))
    await server.finish_weight_update(global_steps=3)
    assert loaded == len(trained.state_dict())

    after = await server.generate(prompt_ids=prompt, sampling_params=dict(greedy), request_id="a")
    assert after.extra_fields["global_steps"] == 3
    # Random tiny models may agree on greedy tokens, so compare what each model says about them.
    old_scores = _reference_log_probs(_load_reference(model_dirs[0]), prompt, after.token_ids)
    assert (torch.tensor(after.log_probs) - old_scores).abs().max() > 1e-2
    assert before.log_probs != after.log_probs or before.token_ids != after.token_ids
    assert after.token_ids == _reference_greedy(trained, prompt, max_new_tokens=20)
    assert torch.allclose(
        torch.tensor(after.log_probs), _reference_log_probs(trained, prompt, after.token_ids), atol=1e-4
    )

    with pytest.raises(KeyError, match="unknown to the rollout model"):
        await server.load_weights([("model.layers.99.mlp.up_proj.weight", torch.zeros(1))])
    name, tensor = next(iter(trained.state_dict().items()))
    with pytest.raises(ValueError, match="shape"):
        await server.load_weights([(name, torch.zeros(tensor.shape[0] + 1))])


async def test_abort_interrupts_sampling_and_gates_new_requests(model_dirs):
    server = _server(model_dirs[0], response_length=4000, prompt_length=64)
    prompt = _prompt(model_dirs[0], "Tell me a long story.")
    long_run = asyncio.create_task(
        server.generate(prompt_ids=prompt, sampling_params={"ignore_eos": True}, request_id="long")
    )
    await asyncio.sleep(0.5)
    result = await server.abort_all_requests()
    assert result["request_ids"] == ["long"]
    out = await asyncio.wait_for(long_run, timeout=30)
    assert out.stop_reason == "aborted"
    assert 0 < len(out.token_ids) < 4000 and len(out.log_probs) == len(out.token_ids)

    # While the gate is closed a new request waits; it runs after resume_generation.
    waiting = asyncio.create_task(
        server.generate(
            prompt_ids=prompt, sampling_params={"max_tokens": 3, "ignore_eos": True}, request_id="w"
        )
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await server.resume_generation()
    resumed = await asyncio.wait_for(waiting, timeout=30)
    assert resumed.stop_reason == "length" and len(resumed.token_ids) == 3

    # A replica leaving the load balancer rejects new requests at once.
    await server.abort_all_requests(reject_request=True)
    rejected = await server.generate(prompt_ids=prompt, sampling_params={"max_tokens": 3}, request_id="x")
    assert rejected.stop_reason == "aborted" and rejected.token_ids == []


async def test_invalid_requests_raise_clear_errors(model_dirs):
    server = _server(model_dirs[0], max_model_len=32)
    with pytest.raises(ValueError, match="no room to generate"):
        await server.generate(prompt_ids=list(range(3, 40)), sampling_params={}, request_id="long")
    with pytest.raises(NotImplementedError, match="text-only"):
        await server.generate(prompt_ids=[5, 6], sampling_params={}, request_id="img", image_data=["x"])
    with pytest.raises(ValueError, match="top_p"):
        await server.generate(prompt_ids=[5, 6], sampling_params={"top_p": 0.0}, request_id="p")
    with pytest.raises(ValueError, match="rollout dtype"):
        _server(model_dirs[0], dtype="float8")
    with pytest.raises(ValueError, match=r"unknown rollout\.engine_kwargs\.hf"):
        _server(model_dirs[0], engine_kwargs={"hf": {"threads": 2}})
    with pytest.raises(ValueError, match="encodes to"):
        _server(model_dirs[0], engine_kwargs={"hf": {"logit_bias": [["Hello world, friends", 1.0]]}})


@pytest.fixture
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="test_hf_rollout")
    yield ray
    ray.shutdown()


async def test_replica_and_adapter_sync_weights_over_ray(model_dirs, ray_cluster, monkeypatch):
    """What main_ppo does with rollout.name=hf: launch the replica next to a worker, push the trainer's
    weights through the adapter found in verl's registry, then generate through the server handle."""
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import RolloutMode, get_rollout_replica_class

    import collabllm_verl.recipe.cpu  # noqa: F401  (registers the backend, as VERL_USE_EXTERNAL_MODULES does)

    ray = ray_cluster

    @ray.remote(num_cpus=0)
    class TrainerWorkerStandIn:
        def ping(self):
            return True

    config = _rollout_config(load_format="dummy")  # random weights until the first sync, as in training
    model_config = HFModelConfig(path=model_dirs[0])
    replica = get_rollout_replica_class("hf")(
        replica_rank=0, config=config, model_config=model_config, gpus_per_node=1
    )
    replica.workers = [TrainerWorkerStandIn.remote()]
    replica.rollout_mode = RolloutMode.HYBRID
    await replica.launch_servers()
    assert replica.server_address.endswith("hf_server_0_0")

    monkeypatch.setenv("RANK", "0")
    adapter = get_rollout_class("hf", "async")(config=config, model_config=model_config, device_mesh=None)
    trained = _load_reference(model_dirs[1])
    await replica.sleep()  # the trainer's sequence around a sync: sleep, push weights, wake up
    await adapter.update_weights((name, t) for name, t in trained.state_dict().items())
    await adapter.update_weights(iter(()), global_steps=5)  # an empty sync still stamps the version
    await replica.wake_up()

    prompt = _prompt(model_dirs[0], "Is 91 prime?")
    out = await replica.server_handle.generate.remote(
        request_id="ray",
        prompt_ids=prompt,
        sampling_params={"temperature": 0, "ignore_eos": True, "max_tokens": 8},
    )
    assert out.token_ids == _reference_greedy(trained, prompt, max_new_tokens=8)
    assert out.extra_fields["global_steps"] == 5
    with pytest.raises(NotImplementedError, match="LoRA"):
        await adapter.update_weights(iter(()), peft_config={"r": 8})
