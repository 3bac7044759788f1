"""Training tokens/s of text_lm against induction at the same model shape, and the data share.

Both tasks feed the same 2-layer attention-only transformer (d_model 128, 4 heads, 128-token
windows, batch 16, a 1,024-token vocabulary: BPE on Shakespeare vs uniform random tokens); steps
are timed interleaved on one thread, median of repeats. Also: the time to draw a batch of windows
from the memory-mapped stream as a share of a text_lm step (goal < 5%), and the tokeniser's
training and encoding time for the corpus (cold cache).

    python benchmarks/text_throughput.py [--steps 30] [--repeats 5]
"""

import argparse
import tempfile

import torch

from common import interleaved, table, write_results
from icl_lab.experiment import load_config
from icl_lab.seeding import generator
from icl_lab.store.run import Run
from icl_lab.training.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = tempfile.mkdtemp()
    text = load_config(
        "text_lm",
        [
            "checkpointing.every=null",
            "task.corpus=shakespeare",
            "task.tokenizer=bpe",
            "task.vocab_size=1024",
            "task.seq_len=128",
            "training.batch_size=16",
        ],
    )
    induction = load_config(
        "induction",
        [
            "checkpointing.every=null",
            f"model={text.model.model_dump_json()}",
            "task.vocab_size=1024",
            "task.seq_len=128",
            "training.batch_size=16",
        ],
    )
    ours = {"text_lm": Trainer(Run.create(text, runs), progress=False)}
    ours["induction"] = Trainer(Run.create(induction, runs), progress=False)
    streams = ours["text_lm"].tasks[0].streams
    info = streams.info
    print(
        f"corpus {info['source']}: {sum(info['characters'].values()):,} characters -> "
        f"{sum(info['tokens'].values()):,} tokens; BPE trained in {info['tokenizer_train_s']:.1f} s, "
        f"encoded in {info['encode_s']:.1f} s (when the cache was built)"
    )
    task, g = ours["text_lm"].tasks[0], generator(0, "bench")
    median = interleaved({name: t.train_step for name, t in ours.items()}, args.steps, args.repeats, warmup=5)
    data_s = interleaved({"windows": lambda: task.sample(16, g)}, args.steps * 10, args.repeats)["windows"]
    rows = table(median, "induction", 16 * 128)
    share = data_s / median["text_lm"]
    print(f"drawing a batch of windows: {data_s * 1e3:.2f} ms = {share:.1%} of a text_lm step (goal < 5%)")
    out = write_results(
        "text_throughput",
        {
            "rows": rows,
            "data_ms": data_s * 1e3,
            "data_share_of_step": share,
            "streams": streams.info | {"test_documents": None},
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
