"""Peak memory against clip length: Co-Prop (chunked, flat) vs processing all T frames at once.

  PYTHONPATH=$PWD python benchmarks/memory_vs_clip_length.py [--lengths 5,10,50,100,300,1000] \
      [--chunk 30] [--size 64] [--platform gpu] [--plot benchmarks/memory_vs_clip_length.png]

The paper claims Co-Prop "reduces memory compared with simultaneous processing". For each clip
length T this prints one JSON line with the compiled working memory (XLA memory analysis of the
executables, MiB: arguments + temporaries; nothing is run) of
  * coprop: the pipeline as `predict` runs it on any length, chunks of --chunk frames with the
    propagator memory carried (`Segmenter.segment_chunk`): the KPF on at most --keyframe_batch
    keyframes, then one propagation scan over the chunk; the two run one after the other, so the
    peak is the larger of the two executables. It does not depend on T beyond the first chunk.
  * simultaneous: a per-clip model as per-clip AVS models work (e.g. AVSBench's TPAVI attends
    across all frames of a clip): the KPF applied to all T frames as one batch, then one
    temporal self-attention layer over every frame's 1/8-resolution tokens (width 32, one head).
    not in the paper: this stand-in for "simultaneous processing" (which the paper does not
    specify) is ours; its attention is the part whose memory grows as T^2.
Models: the runlocal sizes (configs/base.py:apply_runlocal) at --size px.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mib(mem) -> float:
  return round((mem.argument_size_in_bytes + mem.temp_size_in_bytes) / 2 ** 20, 2)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--lengths", default="5,10,50,100,300,1000")
  p.add_argument("--chunk", type=int, default=30, help="Co-Prop's frames per chunk (predict's)")
  p.add_argument("--keyframe_batch", type=int, default=16)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--platform", default=None)
  p.add_argument("--plot", default="", help="write a PNG of memory against T here")
  a = p.parse_args(argv)
  if a.platform:
    os.environ["JAX_PLATFORMS"] = a.platform
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from configs.base import apply_runlocal, get_base_config
  from coprop_jax import pipeline, propagation

  cfg = get_base_config()
  apply_runlocal(cfg)
  size = a.size
  seg = pipeline.make_segmenter(cfg, keyframe_batch=a.keyframe_batch)
  params = pipeline.init_params(cfg, jax.random.PRNGKey(0), size, audio_logmel=False)
  sds = jax.ShapeDtypeStruct
  dev = jax.devices()[0]
  _, encode = __import__("coprop_jax.models.propagator", fromlist=["build_encoder"]).build_encoder(
      cfg.propagator)

  def coprop_mib(t: int) -> dict:
    c = min(t, a.chunk)
    mem = jax.eval_shape(lambda: propagation.empty_memory(
        seg.model, encode, params["encoder"], (1, c, size, size, 3), np.uint8,
        int(cfg.propagator.memory_slots)))
    pargs = ({"propagator": params["propagator"], "encoder": params["encoder"]},
             sds((1, c, size, size, 3), np.uint8), sds((1, c, size, size), np.int32),
             sds((1, c), bool), sds((1, c), np.int32), sds((1, c, 128), np.float32), None, None,
             sds((1, c), bool), mem)
    prop = seg.propagate.jitted.lower(*pargs).compile().memory_analysis()
    k = min(a.keyframe_batch, c)
    kpf = seg.kpf.lower(params["keyframe"], sds((k, size, size, 3), np.float32),
                        {"audio_embed": sds((k, 128), np.float32)}).compile().memory_analysis()
    return dict(coprop_MiB=max(_mib(prop), _mib(kpf)), coprop_prop_MiB=_mib(prop),
                coprop_kpf_MiB=_mib(kpf), chunk=c)

  class TemporalAttention(nn.Module):
    width: int = 32

    @nn.compact
    def __call__(self, tokens):   # [T * n, C] -> [T * n, width]
      x = nn.Dense(self.width)(tokens)
      q, k, v = (nn.Dense(self.width)(x) for _ in range(3))
      att = jax.nn.softmax(q @ k.T / np.sqrt(self.width), -1)
      return x + att @ v

  ta = TemporalAttention()
  s8 = size // 8

  def simultaneous(kparams, tparams, frames, audio):
    logits = seg.kpf_model.apply(kparams, frames, audio_embed=audio)      # [T, H, W, 1]
    tok = jax.image.resize(logits, (frames.shape[0], s8, s8, logits.shape[-1]), "linear")
    return ta.apply(tparams, tok.reshape(-1, tok.shape[-1]))

  tparams = ta.init(jax.random.PRNGKey(1), jnp.zeros((4, 1)))

  def simultaneous_mib(t: int) -> float:
    f = jax.jit(simultaneous).lower(params["keyframe"], tparams, sds((t, size, size, 3), np.float32),
                                    sds((t, 128), np.float32)).compile().memory_analysis()
    return _mib(f)

  rows = []
  for t in [int(x) for x in a.lengths.split(",")]:
    rec = dict(what="memory_vs_clip_length", T=t, size=size, platform=dev.platform,
               device=dev.device_kind, **coprop_mib(t), simultaneous_MiB=simultaneous_mib(t))
    rows.append(rec)
    print(json.dumps(rec), flush=True)
  if a.plot:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ts = [r["T"] for r in rows]
    ax.plot(ts, [r["coprop_MiB"] for r in rows], "o-", label=f"Co-Prop (chunks of {a.chunk})")
    ax.plot(ts, [r["simultaneous_MiB"] for r in rows], "s-", label="all frames at once")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clip length T (frames)")
    ax.set_ylabel("compiled memory (MiB)")
    ax.set_title(f"{size}px, runlocal models, {dev.platform}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.plot, dpi=120)


if __name__ == "__main__":
  main()
