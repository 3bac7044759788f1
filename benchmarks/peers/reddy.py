"""Training speed on Reddy's bursty classification: the author's jitted JAX update vs icl-lab's
train_step, at the paper's setting (configs/reddy_paper.yaml).

Both run in long-lived workers pinned to one core with one thread each, in alternating timed turns
after a warm-up; the first step (JAX's trace and compile) is reported apart. Ratio = peer / ours
(> 1: icl-lab is faster). See benchmarks/peers/README.md for the setup.

    taskset -c 1 .venv/bin/python benchmarks/peers/reddy.py --peer-repo /tmp/peers/ICL \
        --peer-python /tmp/peers/jaxvenv/bin/python [--set training.compile=on] [--steps 100 --repeats 5]
"""

from harness import main, parser

NOTES = (
    "peer step = one iteration of ic_vs_iw_v3.py's loop (YiranHuangIrene/ICL at 045dccf) at the paper's"
    " setting: NumPy generate_input_seqs for 128 sequences + jitted update (SGD 0.01, decay 1e-6), no"
    " evaluation or stored files. ours = Trainer.train_step of config reddy_paper (sampling, forward,"
    " backward, SGD)."
)

if __name__ == "__main__":
    main("reddy", "reddy_paper", "reddy_peer.py", parser(__doc__.split("\n")[0]).parse_args(), NOTES)
