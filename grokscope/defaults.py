"""The demo run: a configuration that groks in well under a minute on a 2-core CPU.

``gs.train(**DEMO, out="runs/demo")`` trains a one-hidden-layer ReLU MLP (width 256) on
modular addition ``a + b mod 59`` with two-hot inputs (``2p = 118`` features), half of the
``59^2 = 3481`` pairs for training, full-batch AdamW (lr 3e-3, weight decay 1.0, betas
(0.9, 0.98)), float32.

Why these values (measured with plain torch on the 2-core CI machine, seeds 0, 1, 2):

* **The modulus.** ``p = 97`` groks too (train accuracy 0.9 at step ~150, test 0.9 at ~1700
  with lr 3e-3) but a step costs ~2.7x more (more samples, wider input), so the run took
  ~50 s; ``p = 59`` keeps the same story at a third of the cost.
* **The training fraction.** With 50% of the table the train accuracy passes 0.9 at step
  ~100 and the test accuracy stays below 0.01 until step ~400, then climbs to 0.9 at step
  ~1350-1400 (all three seeds): a memorisation plateau and a grokking delay of ~1300 steps.
  With 40% the delay grows past 3000 steps (test accuracy 0.81 at step 3000), too slow for a
  demo.
* **The learning rate.** 3e-3 rather than the usual 1e-3: at 1e-3 (``p = 97``) test accuracy
  was only 0.08 after 3000 steps. Weight decay 1.0 is what makes the network grok at all
  (Power et al.; Liu et al.'s Omnigrok).
* **Stopping.** ``stop_when`` ends the run 300 steps after test accuracy first reaches 0.99
  (around step ~1700-1900), so the plot shows the plateau after grokking; ``steps`` is only
  a cap.
* **Threads.** ``num_threads=1``: on a shared 2-core machine, two intra-op threads that wait
  for a busy core spin, and a step of this model was measured 8-15x slower with 2 threads
  than with 1 under load (13 ms vs 100-200 ms). One thread is never much slower here.
* **Recording.** The default schedule (log-spaced to step 1000, then every 100 steps) keeps
  ~75 checkpoints of the 45k parameters (~14 MB), enough for every offline measure to
  resolve memorisation, the plateau and the jump. ``eval_every=50`` only feeds the progress
  bar and the early stop.

Wall time through :func:`grokscope.train` on this machine: see the report of the commit that
added this file (``benchmarks``/tests do not assert times).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEMO"]

DEMO: dict[str, Any] = dict(
    task="modular",
    task_kwargs={"p": 59, "op": "+", "train_frac": 0.5, "seed": 0, "encoding": "onehot"},
    model="mlp",
    model_kwargs={"width": 256, "depth": 1, "activation": "relu"},
    steps=4000,
    lr=3e-3,
    weight_decay=1.0,
    betas=(0.9, 0.98),
    optimizer="adamw",
    batch_size=None,
    dtype="float32",
    seed=0,
    eval_every=50,
    stop_when={"test_acc": 0.99, "patience": 300},
    num_threads=1,
)
