"""Training speed on Singh et al.'s task: the authors' own jitted JAX step vs icl-lab's train_step.

Both run in long-lived workers pinned to one core with one thread each, in alternating timed turns
after a warm-up; the first step (JAX's trace and compile) is reported apart. Ratio = peer / ours
(> 1: icl-lab is faster). See benchmarks/peers/README.md for the setup.

    taskset -c 1 .venv/bin/python benchmarks/peers/singh.py --peer-repo /tmp/peers/icl-dynamics \
        --peer-python /tmp/peers/jaxvenv/bin/python [--set training.compile=on] [--steps 100 --repeats 5]
"""

from harness import main, parser

NOTES = (
    "peer step = one iteration of icl-dynamics main.py's loop for the main run (jitted data sampler +"
    " jitted train_step: Adam, loss + gradient norm + microbatch gradient spread), no eval or"
    " checkpoints; Gaussian features in place of the Omniglot file. ours = Trainer.train_step of"
    " config singh (sampling, forward, backward, Adam)."
)

if __name__ == "__main__":
    main("singh", "singh", "singh_peer.py", parser(__doc__.split("\n")[0]).parse_args(), NOTES)
