"""Capture overhead: tokens/s with routing capture on vs off, same model, same inputs.

Goal (issue 3): capture costs at most 5 % of tokens/s. Three measurements, interleaved in
rounds so drift hits all alike; the figure is the best round of each (the machine is shared, so
the minimum is the least disturbed estimate; the median is printed too):
- off:       the model's forward over [batch, length] token windows;
- recorder:  the same forward with the routing recorder installed, plus copying the routing
             out (`take`) after each forward;
- capture:   everything `capture_corpus` does per batch: the above plus writing the trace.
- decode:    greedy generation of --decode tokens, recorder off vs on.
The model is a randomly initialised Qwen3-MoE-style model saved to a temporary folder and
loaded with from_pretrained, so it goes through the same path as a hub model.

Run: python benchmarks/bench_capture.py [--hidden 256 --layers 4 --experts 32 --k 4 --device cpu --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build(folder: Path, args, dtype: torch.dtype = torch.float32) -> Path:
    """A randomly initialised Qwen3-MoE-style checkpoint of the given shape, saved to `folder`."""
    import transformers

    config = transformers.Qwen3MoeConfig(
        vocab_size=4096, hidden_size=args.hidden, intermediate_size=args.hidden * 2,
        moe_intermediate_size=args.hidden // 2, num_hidden_layers=args.layers, num_attention_heads=8,
        num_key_value_heads=4, head_dim=args.hidden // 8, num_experts=args.experts,
        num_experts_per_tok=args.k, max_position_embeddings=4096)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--forwards", type=int, default=2, help="forward passes per measurement")
    parser.add_argument("--decode", type=int, default=64, help="decode steps in the generation measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from expertcache.trace.capture import _add_batch, load_model
    from expertcache.trace.writer import TraceWriter

    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        loaded = load_model(build(tmp / "model", args), device_map=args.device, dtype=args.dtype, need_tokenizer=False)
        info = loaded.infos["decoder"]
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 4096, (args.batch, args.length), generator=g).to(loaded.input_device)  # [B, T]
        windows = [type("W", (), {"domain": "random", "key": None})() for _ in range(args.batch)]
        sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)

        def forward():
            with torch.inference_mode():
                loaded.model.base_model(input_ids=ids, use_cache=False)

        def off() -> None:
            for _ in range(args.forwards):
                forward()
            sync()

        def recorded() -> None:
            with loaded.recorder() as recorder:
                for _ in range(args.forwards):
                    forward()
                    recorder.take()

        writer = TraceWriter(tmp / "trace", info)  # steady state: one trace, a shard per 65536 tokens

        def captured() -> None:
            with loaded.recorder() as recorder:
                for _ in range(args.forwards):
                    forward()
                    _add_batch(writer, recorder.take(), ids.cpu().numpy(), windows, 0)

        prompt = ids[:1, :32]  # [1, 32]

        def decode(record: bool) -> float:
            """Greedy decode of --decode tokens; seconds, with the recorder on or off."""
            options = dict(max_new_tokens=args.decode, min_new_tokens=args.decode, do_sample=False, pad_token_id=0)
            t0 = time.perf_counter()
            with torch.inference_mode():
                if record:
                    with loaded.recorder() as recorder:
                        loaded.model.generate(prompt, **options)
                        recorder.take()
                else:
                    loaded.model.generate(prompt, **options)
            sync()
            return time.perf_counter() - t0

        off()  # warm-up
        recorded()
        times = {"off": [], "recorder": [], "capture": []}
        for r in range(args.rounds):
            for name, fn in (("off", off), ("recorder", recorded), ("capture", captured)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        writer.close()
        decode_times = {"off": [], "recorder": []}
        decode(False)
        for _ in range(args.rounds):
            decode_times["off"].append(decode(False))
            decode_times["recorder"].append(decode(True))
        tokens = args.forwards * ids.numel()
        best = {name: tokens / min(t) for name, t in times.items()}
        median = {name: tokens / statistics.median(t) for name, t in times.items()}
        print(f"model: Qwen3-MoE-style, hidden {args.hidden}, {args.layers} MoE layers, {args.experts} experts, "
              f"top-{args.k}, {args.dtype} on {loaded.input_device}, {torch.get_num_threads()} threads; "
              f"batch {args.batch} x {args.length} tokens, {args.forwards} forwards x {args.rounds} rounds")
        for name in times:
            print(f"  {name:9s} best {best[name]:9,.0f} tokens/s  overhead {100 * (1 - best[name] / best['off']):+6.2f} %"
                  f"   | median {median[name]:9,.0f} tokens/s  overhead {100 * (1 - median[name] / median['off']):+6.2f} %")
        rate = {name: args.decode / min(t) for name, t in decode_times.items()}
        print(f"greedy decode, {args.decode} tokens after a 32-token prompt (best of {args.rounds}):")
        for name in rate:
            print(f"  {name:9s} best {rate[name]:9,.1f} tokens/s  overhead {100 * (1 - rate[name] / rate['off']):+6.2f} %")


if __name__ == "__main__":
    main()
